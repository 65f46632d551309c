"""Safe integer arithmetic (``+ - *``) shared by the verifiable task and the test model.

The validator checks an ``ArithmeticTask`` answer exactly with this evaluator,
and the deterministic miner backend answers with it, so no ``eval`` is ever
run on text that crossed the network.
"""

from __future__ import annotations

import ast
import re

MAX_EXPRESSION = 200
# Linear time on any text: a match starts only where a digit run starts, and the runs are possessive. The
# plain pattern backtracked through every shorter run at every position: 20,000 digits took 15 s, and
# any key holder could freeze a miner (and the validator's organic scoring) with one prompt.
EXPRESSION = re.compile(r"(?<!\d)-?\d++(?:\s*+[-+*]\s*+-?\d++)+")
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def evaluate(expression: str) -> int:
    """Evaluate integers joined by + - * with the usual precedence; anything else is a ValueError."""
    if len(expression) > MAX_EXPRESSION:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ValueError("not an arithmetic expression") from None
    return _walk(tree.body)


def _walk(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_walk(node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
        left, right = _walk(node.left), _walk(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Sub):
            return left - right
        return left * right
    raise ValueError("only integers with + - * are allowed")


def find_expression(text: str) -> str | None:
    """The last arithmetic expression in a prompt ("What is 12 * 7 + 3?" -> "12 * 7 + 3")."""
    found = EXPRESSION.findall(text)
    return found[-1] if found else None


# What a prompt may hold that ``+ - *`` on integers would misread: brackets, division, powers, percent,
# decimals and thousands separators.
_OTHER_ARITHMETIC = re.compile(r"[()/÷^%]|\d[.,]\d|\*\*")


def sole_expression(text: str) -> str | None:
    """The prompt's arithmetic when it is one plain integer ``+ - *`` expression and nothing else the
    evaluator would misread; None otherwise. For scoring a caller's prompt: "(2 + 3) * 4", "2.5 * 4",
    "1,000 + 1" or "3 * 4 for the 2024-2025 season" were read as another sum, and a correct answer
    scored 0."""
    if _OTHER_ARITHMETIC.search(text):
        return None
    found = EXPRESSION.findall(text)
    return found[0] if len(found) == 1 else None


def numbers_in(text: str) -> list[str]:
    """Numbers as written (thousands separators removed)."""
    return [n.replace(",", "") for n in NUMBER.findall(text)]
