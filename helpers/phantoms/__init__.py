"""The demo profile's images: synthetic chest X-ray phantoms drawn from each
report's labels, with exact lesion masks (rendering) and one drawer per finding."""
