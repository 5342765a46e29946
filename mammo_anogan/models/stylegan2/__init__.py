"""models/stylegan2."""
