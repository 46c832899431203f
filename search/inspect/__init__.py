"""What a person reads: the Pareto front, plots, the HTML report and MLflow tracking."""
