"""AnoGAN scoring: batched multi-seed latent projection, difference maps and anomaly scores.

``projector`` optimises N seeded latents per image in one batch, ``losses`` holds the pluggable
projection losses, ``scoring`` turns projections into maps and scores, ``module`` runs it all through
Lightning's predict loop and ``outputs`` writes (and resumes) the per-image results.
"""
