"""Built-in models (zoo.models) and data sets (zoo.data)."""
