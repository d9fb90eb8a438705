"""The data: IU-Xray reports, CheXpert labels from their text, views, the report-level
split, images (Open-I PNGs or phantoms), downloads and annotation files."""
