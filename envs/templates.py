"""Named prompt templates: how a dataset question becomes the text the policy sees.

A template is a string holding ``{question}``. Only ``{question}`` is substituted; every
other brace is kept as written, so LaTeX such as ``\\boxed{}`` needs no escaping (a
``str.format`` template would read ``{}`` as a field).

Chat formatting is not done here: the environment returns the rendered prompt as one user
message in ``info["messages"]`` and the trainer applies the model's chat template to it.
"""

from __future__ import annotations

TEMPLATES: dict[str, str] = {
    # The instruction the SFPO authors (and verl's math recipes) append to every problem.
    "math": "{question}\nPlease reason step by step, and put your final answer within \\boxed{}.",
    "code": (
        "{question}\n\nWrite a complete, self-contained Python solution (include any imports "
        "it needs). Put all of your code in a single ```python code block."
    ),
    "plain": "{question}",
}


def resolve_template(template: str, setting: str = "prompt_template") -> str:
    """The format string for ``template``: a name in ``TEMPLATES`` or a string with ``{question}``."""
    if not isinstance(template, str):
        raise TypeError(
            f"`{setting}` must be a template name ({', '.join(TEMPLATES)}) or a string "
            f"containing '{{question}}', got {type(template).__name__}."
        )
    if template in TEMPLATES:
        return TEMPLATES[template]
    if "{question}" not in template:
        raise ValueError(
            f"`{setting}` ({template!r}) is neither a template name (valid: "
            f"{', '.join(TEMPLATES)}) nor a format string containing '{{question}}'. "
            "Pass one of the names, or a string such as 'Q: {question}\\nA:'."
        )
    return template


def render(template: str, question: str) -> str:
    """Put ``question`` into ``template`` (a name or a format string)."""
    return resolve_template(template).replace("{question}", question)
