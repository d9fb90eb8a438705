"""Chapter 6: attribution methods, scoring maps against regions, the positive-control
model, and explaining every setting."""
