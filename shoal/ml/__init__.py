"""shoal.ml: Spark MLlib's algorithms with scikit-learn's API, trained across shoal's cluster."""
from shoal.ml._input import DesignMatrix, as_design_matrix, set_executor, use_executor

__all__ = ["DesignMatrix", "as_design_matrix", "set_executor", "use_executor"]
