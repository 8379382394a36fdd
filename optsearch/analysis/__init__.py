"""What a finished study teaches: importances, design principles with intervals, figures and the report."""
