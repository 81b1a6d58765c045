"""Exchanging tables with a running Spark session, through Arrow (no row-by-row conversion)."""
from __future__ import annotations

import pyarrow as pa

from shoal.exceptions import MissingDependencyError

ARROW_CONF = "spark.sql.execution.arrow.pyspark.enabled"


def spark_to_arrow(df) -> pa.Table:
    """A Spark DataFrame's rows as one pyarrow Table, collected as Arrow record batches."""
    MissingDependencyError.require("shoal.data.from_spark", "bench", "pyspark")
    if hasattr(df, "toArrow"):                      # pyspark >= 4.0
        return df.toArrow()
    batches = df._collect_as_arrow()                # pyspark 3.5: the same Arrow path, older name
    if batches:
        return pa.Table.from_batches(batches)
    from pyspark.sql.pandas.types import to_arrow_schema
    return to_arrow_schema(df.schema).empty_table()


def arrow_to_spark(table: pa.Table, spark):
    """A Spark DataFrame of ``table``'s rows, handed over as Arrow (pyspark >= 4.0 takes the
    Table itself; older versions take pandas with Arrow enabled)."""
    MissingDependencyError.require("Dataset.to_spark", "bench", "pyspark")
    for field in table.schema:
        if isinstance(field.type, pa.FixedShapeTensorType):  # Spark has no tensor type
            if len(field.type.shape) != 1:
                raise ValueError(f"to_spark: column {field.name!r} is a {len(field.type.shape)}-D "
                                 f"tensor; Spark takes 1-D arrays only. Flatten it first.")
            i = table.schema.get_field_index(field.name)
            storage = table.column(i).combine_chunks().storage
            table = table.set_column(i, field.name,
                                     storage.cast(pa.list_(field.type.value_type)))
    try:
        return spark.createDataFrame(table)
    except TypeError:                               # pyspark < 4.0 has no Arrow Table input
        old = spark.conf.get(ARROW_CONF, "false")
        spark.conf.set(ARROW_CONF, "true")
        try:
            return spark.createDataFrame(table.to_pandas())
        finally:
            spark.conf.set(ARROW_CONF, old)
