"""The results table's column names are ``table``'s constants: the modules that read the table (instability,
forecast, claims, analysis, plots, reproduce) never spell them as string literals (docstrings apart)."""

import ast
from pathlib import Path

import pytest

from proxyscale.core import table

COLUMNS = {table.SIZE, table.LR, table.N_PARAMS, table.FINAL_LOSS, table.L0, table.DIVERGED}
SRC = Path(table.__file__).parents[1]


@pytest.mark.parametrize("module", ["core/instability", "jobs/forecast", "science/claims", "core/analysis",
                                    "outputs/plots", "jobs/reproduce"])
def test_readers_of_the_table_use_its_column_constants(module):
    tree = ast.parse((SRC / f"{module}.py").read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    spelled = [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in COLUMNS
               and id(n) not in docs]
    assert not spelled, f"{module}.py spells table columns as literals: {spelled}; use table.SIZE, table.LR, ..."
