"""Side-by-side measurements; each writes a JSON result to benchmarks/results/ and a table."""
