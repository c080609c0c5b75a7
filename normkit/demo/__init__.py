"""``normkit demo``: batch normalization's claims put to the test on data."""
