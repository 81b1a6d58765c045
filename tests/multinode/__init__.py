"""Tests on a two-node Ray cluster. A package, so that the package-scoped ``cluster``
fixture ends (its namespaces and Ray processes gone) when these tests end, not with the
whole session."""
