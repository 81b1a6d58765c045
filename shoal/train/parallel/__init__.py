"""shoal.train.parallel: model parallelism (pipeline, tensor) on shoal.collective groups."""
