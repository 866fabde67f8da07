"""Studies: named arms × seeds, grouped into compiled programs, run and reported."""
