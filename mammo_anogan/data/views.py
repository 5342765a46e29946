"""View and laterality vocabularies of mammography: DICOM codes, vendor strings, public-dataset naming.

One parser for every place a view or a breast side is written down, so ``RCC``, ``R-CC``,
``RIGHT CC``, ``cranio-caudal``, ``(R-10242, SRT)``, ``(399162004, SCT)``, a CBIS-DDSM patient id
``Mass-Training_P_00001_RIGHT_CC`` and an INbreast file name ``..._MG_R_CC_ANON.dcm`` all read as
view ``CC``, side ``R``. The full table (which header holds what, for which vendor or dataset) is in
``docs/dicom_vocabulary.md``.

Sources: DICOM PS3.16 CID 4014 "View for Mammography" and CID 4015 "View Modifier for
Mammography" (SNOMED-RT ``R-....`` codes under the SRT / deprecated SNM3 designators, and their
SNOMED CT equivalents), the ACR MQCM 1999 abbreviations they list, and the naming of CBIS-DDSM,
INbreast, VinDr-Mammo, CMMD and OPTIMAM (OMI-DB).

Canonical views: ``CC``, ``MLO``, ``ML``, ``LM``, ``LMO``, ``XCCL``, ``XCCM``, ``XCC``, ``FB``,
``SIO``, ``ISO``, ``AT``, ``CV``, ``TAN``, ``SPECIMEN``. Laterality: ``L``, ``R``, ``B`` (both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pydicom.sr.codedict import codes

#: CID 4014 (views) and CID 4015 (modifiers) concepts -> canonical view, by pydicom's concept names.
#: Their SNOMED CT codes come from pydicom's copy of the DICOM code tables (``codes.CID4014``).
_CID4014_VIEWS = {
    "CranioCaudal": "CC",
    "MedioLateralObliqueProjection": "MLO",
    "MedioLateralProjection": "ML",
    "LateroMedial": "LM",
    "LateroMedialOblique": "LMO",
    "CranioCaudalExaggeratedLaterally": "XCCL",
    "CranioCaudalExaggeratedMedially": "XCCM",
    "CaudoCranial": "FB",
    "SuperolateralToInferomedialOblique": "SIO",
    "InferomedialToSuperolateralOblique": "ISO",
    "TissueSpecimenFromBreast": "SPECIMEN",
}
#: CID 4015 modifiers that the ACR MQCM 1999 vocabulary uses as views of their own.
_CID4015_VIEWS = {"AxillaryTail": "AT", "Cleavage": "CV", "Tangential": "TAN"}
#: CID 4015 modifiers that make the image a partial view (never a full-field film).
_CID4015_PARTIAL = {"Magnification": "magnification", "SpotCompression": "spot compression"}
#: SNOMED-RT codes (designators SRT / SNM3) of the same concepts (PS3.16, 2013 edition), plus the
#: deprecated ones older units still send.
_SNOMED_RT_VIEWS = {
    "R-10242": "CC",
    "R-10226": "MLO",
    "R-10224": "ML",
    "R-10228": "LM",
    "R-10230": "LMO",
    "R-1024A": "XCCL",
    "Y-X1770": "XCCL",  # deprecated: not a valid SNOMED code
    "R-1024B": "XCCM",
    "Y-X1771": "XCCM",
    "R-102CF": "XCC",  # deprecated "cranio-caudal exaggerated"
    "R-10244": "FB",
    "R-102D0": "SIO",
    "R-40AAA": "ISO",
    "G-8310": "SPECIMEN",
    "R-102D1": "AT",
    "R-102D2": "CV",
    "R-102C2": "TAN",
}
_SNOMED_RT_PARTIAL = {"R-102D6": "magnification", "R-102D7": "spot compression"}


def _sct(collection: str, names: dict[str, str]) -> dict[str, str]:
    table = getattr(codes, collection)
    return {str(getattr(table, name).value): value for name, value in names.items()}


#: Code value -> canonical view, for ViewCodeSequence items (SRT, SNM3 and SCT designators alike).
VIEW_CODES: dict[str, str] = {
    **_SNOMED_RT_VIEWS,
    **_sct("CID4014", _CID4014_VIEWS),
    **_sct("CID4015", _CID4015_VIEWS),
}
#: Code value -> partial-view kind, for ViewModifierCodeSequence items.
PARTIAL_VIEW_MODIFIERS: dict[str, str] = {**_SNOMED_RT_PARTIAL, **_sct("CID4015", _CID4015_PARTIAL)}

#: Every canonical view, longest first (the order the combined-code pattern tries them in).
VIEWS = tuple("SPECIMEN XCCL XCCM XCC MLO LMO SIO ISO TAN CC ML LM FB AT CV".split())
#: Views recognised in free text (descriptions, file names); the two-letter exotic ones (AT, CV,
#: FB, ...) are English words or other abbreviations there, so only code fields may use them.
_FREE_TEXT_VIEWS = ("XCCL", "XCCM", "XCC", "MLO", "LMO", "CC", "ML", "LM")

# Phrases (after upper-casing and turning - _ / . , into spaces) -> a code token.
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"CRANIO ?CAUDAL EXAGGERATED LATERALLY|EXAGGERATED CRANIO ?CAUDAL LATERAL(?:LY)?", "XCCL"),
    (r"CRANIO ?CAUDAL EXAGGERATED MEDIALLY|EXAGGERATED CRANIO ?CAUDAL MEDIAL(?:LY)?", "XCCM"),
    (r"CRANIO ?CAUDAL EXAGGERATED|EXAGGERATED CRANIO ?CAUDAL", "XCC"),
    (r"SUPERO ?LATERAL TO INFERO ?MEDIAL OBLIQUE", "SIO"),
    (r"INFERO ?MEDIAL TO SUPERO ?LATERAL OBLIQUE", "ISO"),
    (r"LATERO ?MEDIAL OBLIQUE", "LMO"),
    (r"MEDI(?:O|AL) ?LATERAL OBLI(?:QUE|CUA|QUA)|OBLI(?:QUE|CUA|QUA) MEDIO ?LATERAL", "MLO"),
    (r"MEDI(?:O|AL) ?LATERAL", "ML"),
    (r"LATER(?:O|AL) ?MEDIAL", "LM"),
    (r"CRANI(?:O|AL) ?CAUDAL|CRANEO ?CAUDAL|CRANIO ?CAUDALE?", "CC"),
    (r"CAUDO ?CRANIAL|FROM BELOW", "FB"),
    (r"AXILLARY TAIL", "AT"),
    (r"TISSUE SPECIMEN(?: FROM BREAST)?", "SPECIMEN"),
    (r"SPOT COMPRESSION|SPOT COMPRESSED", "SPOT"),
    (r"MAGNIFICATION|MAGNIFIED", "MAG"),
    (r"IMPLANT DISPLACED", "ID"),
)
_PHRASE_PATTERNS = tuple((re.compile(rf"\b(?:{p})\b"), token) for p, token in _PHRASES)
_WORDS = {
    # views written as words (English, and the Spanish / Portuguese / French ones seen in the field)
    "OBLIQUE": "MLO",
    "OBLICUA": "MLO",
    "OBLIQUA": "MLO",
    "OML": "MLO",
    "CRANIOCAUDAL": "CC",
    "CRANEOCAUDAL": "CC",
    "MEDIOLATERAL": "ML",
    "LATEROMEDIAL": "LM",
    "CLEAVAGE": "CV",
    "TANGENTIAL": "TAN",
    "SPECIMEN": "SPECIMEN",
}
_LATERALITY_WORDS = {
    "L": "L",
    "LT": "L",
    "LEFT": "L",
    "LINKS": "L",
    "IZQ": "L",
    "IZQUIERDA": "L",
    "IZQUIERDO": "L",
    "ESQ": "L",
    "ESQUERDA": "L",
    "GAUCHE": "L",
    "R": "R",
    "RT": "R",
    "RIGHT": "R",
    "RECHTS": "R",
    "DER": "R",
    "DERECHA": "R",
    "DERECHO": "R",
    "DIREITA": "R",
    "DROITE": "R",
    "DROIT": "R",
    "B": "B",
    "BILATERAL": "B",
    "BOTH": "B",
}
_MODIFIER_WORDS = {"SPOT": "spot compression", "MAG": "magnification"}
_VIEW_ALTERNATIVES = "|".join(VIEWS)
#: A combined code: optional side, optional M(agnification)/S(pot) prefix, the view, optional
#: CID 4015 suffix, optional trailing side (``RCC``, ``LMLO``, ``RXCCL``, ``LCCID``, ``MCC``,
#: ``CCR``, ``MLOL``).
_COMBINED = re.compile(
    rf"(?P<side>LEFT|RIGHT|LT|RT|L|R)?(?P<prefix>SPOT|MAG|M|S)?(?P<view>{_VIEW_ALTERNATIVES})"
    r"(?P<suffix>ID|RL|RM|RI|RS|NP|AC|IMF|AX)?(?P<side2>L|R)?"
)


@dataclass(frozen=True)
class ViewFacts:
    """What one piece of text or code says: view, breast side, partial-view modifiers (any may be absent)."""

    view: str | None = None
    laterality: str | None = None
    partial: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.view or self.laterality or self.partial)


def _normalise(text: str) -> str:
    text = re.sub(r"[-_/.,;:()\[\]\\]+", " ", str(text).upper())
    text = re.sub(r"\s+", " ", text).strip()
    for pattern, token in _PHRASE_PATTERNS:
        text = pattern.sub(token, text)
    return text


def parse_view_text(text: str, free_text: bool = False) -> ViewFacts:
    """View, side and partial-view modifiers stated by ``text``; contradictions within it give ``None``.

    ``free_text=True`` (descriptions, protocol names, file names) accepts only the common views and
    single-letter sides next to a view, because short codes like ``AT`` or ``R`` are ordinary words
    or other abbreviations in free text.
    """
    views: set[str] = set()
    sides: set[str] = set()
    partial: set[str] = set()
    allowed = _FREE_TEXT_VIEWS if free_text else VIEWS
    loose_sides: set[str] = set()
    for token in _normalise(text).split():
        if token in _MODIFIER_WORDS:
            partial.add(_MODIFIER_WORDS[token])
            continue
        if token in _WORDS and (not free_text or _WORDS[token] in _FREE_TEXT_VIEWS + ("SPECIMEN",)):
            views.add(_WORDS[token])
            continue
        if token in _LATERALITY_WORDS:
            side = _LATERALITY_WORDS[token]
            (loose_sides if free_text and len(token) == 1 else sides).add(side)
            continue
        match = _COMBINED.fullmatch(token)
        if match is None or match.group("view") not in allowed:
            continue
        views.add(match.group("view"))
        for key in ("side", "side2"):
            if match.group(key):
                sides.add(_LATERALITY_WORDS[match.group(key)])
        prefix = match.group("prefix")
        if prefix:
            partial.add("magnification" if prefix.startswith("M") else "spot compression")
    if views:
        sides |= loose_sides
    view = views.pop() if len(views) == 1 else None
    laterality = sides.pop() if len(sides) == 1 else None
    return ViewFacts(view, laterality, frozenset(partial))


def view_from_code(code_value: str, code_meaning: str = "") -> ViewFacts:
    """A ViewCodeSequence item: the code first (CID 4014), else its meaning as text."""
    code = str(code_value or "").strip().upper()
    if code in VIEW_CODES:
        return ViewFacts(view=VIEW_CODES[code])
    return parse_view_text(code_meaning)


def partial_view_from_code(code_value: str, code_meaning: str = "") -> str | None:
    """``magnification`` / ``spot compression`` for a CID 4015 modifier item, else ``None``."""
    code = str(code_value or "").strip().upper()
    if code in PARTIAL_VIEW_MODIFIERS:
        return PARTIAL_VIEW_MODIFIERS[code]
    partial = parse_view_text(code_meaning).partial
    return next(iter(sorted(partial)), None)


def laterality_from_text(value: str) -> str | None:
    """``L`` / ``R`` / ``B`` from a laterality element or column (``L``, ``Left``, ``RIGHT``, ``B``)."""
    token = _normalise(value)
    return _LATERALITY_WORDS.get(token)


#: CBIS-DDSM ids and folders: ``Mass-Training_P_00001_LEFT_CC`` (``_1`` etc. for ROI / crops).
CBIS_DDSM_NAME = re.compile(
    r"(?:Calc|Mass)-(?:Test|Training)_(?P<patient>P_\d+)_(?P<side>LEFT|RIGHT)_(?P<view>CC|MLO)(?:_\d+)?",
    re.I,
)
