"""Features stage: clip sampling, person-centric crops, frozen VideoMAE token grids and their cache."""
