"""The .flow language: grammar, parser and AST. Knows nothing of files beyond the text it is given."""

from ifc.lang.parse import ParseResult, parse_text

__all__ = ["ParseResult", "parse_text"]
