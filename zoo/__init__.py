"""Built-in models (zoo.models), data sets (zoo.data) and the training recipe (zoo.train)."""
