"""A tiny greeting service."""


def greet(name: str) -> str:
    return f"Hello, {name}!"
