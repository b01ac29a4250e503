"""The prompts of the delphi scores, in the structure of EleutherAI/delphi's and with our own
wording and few-shot examples (docs/delphi_scores.md).

- Detection and fuzzing (``delphi/scorers/classifier/prompts/detection_prompt.py``,
  ``fuzz_prompt.py``): a system message, three few-shot turns (a mixed, an all-0 and an all-1
  answer), then ``Latent explanation: ...`` and ``Example i: text`` lines numbered from 0; the
  answer is a Python list of 0 / 1, one per example. Fuzzing marks tokens ``<<like this>>``.
- Simulation, all at once (``delphi/scorers/simulator/simulation/simulator.py``,
  ``_make_json_prompt``): a system message, few-shot turns of JSON documents whose tokens carry
  activations 0-10, then the document to simulate with every activation ``null``; the answer is
  the same JSON with the activations filled in.
- Simulation, expected value (the same file, ``_make_logprob_prompt``; ``data_models.py``,
  ``format_activation_records`` / ``format_sequences_for_simulation``): a system message, few-shot
  turns (the explanation as a user turn, then an assistant turn of ``token<tab>activation``
  lines between ``<start>`` and ``<end>``), then the explanation to simulate and an assistant
  turn listing its tokens as ``token<tab>unknown``. Nothing is generated: the server's prompt
  log-probabilities at each ``unknown`` give the prediction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DETECTION_PROMPT",
    "FUZZING_PROMPT",
    "PROMPT_VERSION",
    "ClassifierPrompt",
    "classifier_messages",
    "classifier_schema",
    "UNKNOWN",
    "simulation_logprob_messages",
    "simulation_messages",
    "simulation_schema",
]

PROMPT_VERSION = "delphi_v1"
"""Version of these prompts; recorded in every LLM-rated row."""

_DETECTION_SYSTEM = """You are a careful linguistics researcher.

You will be given the explanation of a latent of text, for instance "names of rivers" or "verbs in the past tense".

You will then see several numbered text examples. Decide for each example whether the latent is present in it.

Answer with a Python list holding one entry per example, in order: 1 if the example contains the latent, 0 if it does not. Return the list and nothing else.
"""

_FUZZING_SYSTEM = """You are a careful linguistics researcher.

You will be given the explanation of a latent of text, for instance "names of rivers" or "verbs in the past tense", and several numbered text examples in which some tokens are marked between << and >>. The marks are meant to show where the latent is present.

Some examples are marked wrongly. Decide for each example whether every marked token fits the explanation: all examples may be right, none may be, or some. An example is right only when each of its marked tokens is an instance of the latent.

Answer with a Python list holding one entry per example, in order: 1 if the example is marked correctly, 0 if it is not. Return the list and nothing else.
"""

_PROMPT = "Latent explanation: {explanation}\n\nText examples:\n\n{examples}\n"

_DETECTION_SHOTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "Names of musical instruments.",
        (
            " she tuned the violin before the concert began",
            " the committee approved the budget on Tuesday",
            " a drummer and two guitarists carried their amplifiers in",
            " rain is expected across the northern hills tonight",
            " he practised the piano every morning before school",
        ),
        "[1,0,1,0,1]",
    ),
    (
        'The word "because" introducing a reason.',
        (
            " the train left at nine and arrived late",
            " several players were injured in the second half",
            " prices rose sharply over the summer months",
            " the museum will reopen after the renovation",
            " she wrote the letter and posted it herself",
        ),
        "[0,0,0,0,0]",
    ),
    (
        "Years written as four digits.",
        (
            " the bridge was completed in 1932 after long delays",
            " founded in 1871, the club moved twice",
            " by 2010 the population had doubled",
            " the treaty of 1648 ended the war",
            " elections were held again in 1999",
        ),
        "[1,1,1,1,1]",
    ),
)

_FUZZING_SHOTS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (
        "Names of musical instruments.",
        (
            " she tuned the<< violin>> before the concert began",
            " the committee<< approved>> the budget on<< Tuesday>>",
            " a drummer and two<< guitarists>> carried their amplifiers in",
            " he practised the<< piano>> every morning before<< school>>",
            " the<< cello>> and the<< flute>> played together",
        ),
        "[1,0,0,0,1]",
    ),
    (
        'The word "because" introducing a reason.',
        (
            " the train left at nine<< and>> arrived late",
            " several players were<< injured>> in the second half",
            "<< prices>> rose sharply over the summer months",
            " the museum will reopen<< after>> the renovation",
            " she wrote the letter and<< posted>> it herself",
        ),
        "[0,0,0,0,0]",
    ),
    (
        "Years written as four digits.",
        (
            " the bridge was completed in<< 1932>> after long delays",
            " founded in<< 1871>>, the club moved twice",
            " by<< 2010>> the population had doubled",
            " the treaty of<< 1648>> ended the war",
            " elections were held again in<< 1999>>",
        ),
        "[1,1,1,1,1]",
    ),
)


def _examples(texts: Sequence[str]) -> str:
    """``Example i: text`` lines numbered from 0 (delphi's ``_build_prompt``)."""
    return "\n".join(f"Example {i}: {text}" for i, text in enumerate(texts))


@dataclass(frozen=True)
class ClassifierPrompt:
    """The fixed part of a detection or fuzzing prompt: the system message and the few-shot
    turns (explanation, example texts, answer)."""

    system: str
    shots: tuple[tuple[str, tuple[str, ...], str], ...]


DETECTION_PROMPT = ClassifierPrompt(_DETECTION_SYSTEM, _DETECTION_SHOTS)
FUZZING_PROMPT = ClassifierPrompt(_FUZZING_SYSTEM, _FUZZING_SHOTS)


def classifier_messages(
    prompt: ClassifierPrompt, explanation: str, texts: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """The chat of one detection or fuzzing prompt for ``texts``."""
    messages: list[tuple[str, str]] = [("system", prompt.system)]
    for shot_explanation, shot_texts, answer in prompt.shots:
        messages.append(
            ("user", _PROMPT.format(explanation=shot_explanation, examples=_examples(shot_texts)))
        )
        messages.append(("assistant", answer))
    messages.append(("user", _PROMPT.format(explanation=explanation, examples=_examples(texts))))
    return tuple(messages)


def classifier_schema(n_examples: int) -> dict[str, Any]:
    """The answer schema under ``structured_output``: a list of exactly ``n_examples`` 0 / 1."""
    return {
        "type": "array",
        "items": {"type": "integer", "enum": [0, 1]},
        "minItems": n_examples,
        "maxItems": n_examples,
    }


_SIMULATION_SYSTEM = """We study latents of a neural network. A latent looks for something particular in a short document. You will read the explanation of a latent and predict its activation on every token of a document.

Each document comes as its full text, then as the list of its tokens with the activations left empty (null). Print in valid JSON the same tokens, verbatim and in the same order, with each activation filled in as the explanation suggests: an integer from 0 (the latent is silent) to 10 (it is at its strongest). Most activations are 0. Mind what the explanation says about the context and the order of tokens."""

_SIMULATION_SHOTS: tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...] = (
    (
        "names of musical instruments",
        (" she", " tuned", " the", " violin", " and", " the", " cello", " before", " dinner"),
        (0, 0, 0, 10, 0, 0, 9, 0, 0),
    ),
    (
        "a year written as four digits, strongest right after 'in'",
        (" the", " bridge", " opened", " in", " 1932", " and", " closed", " by", " 1990"),
        (0, 0, 0, 0, 10, 0, 0, 0, 6),
    ),
)


def _document(explanation: str, tokens: Sequence[str], values: Sequence[int] | None) -> str:
    filled = values if values is not None else [None] * len(tokens)
    return json.dumps(
        {
            "to_find": explanation,
            "document": "".join(tokens),
            "activations": [
                {"token": token, "activation": value}
                for token, value in zip(tokens, filled, strict=True)
            ],
        },
        ensure_ascii=False,
    )


def simulation_messages(explanation: str, tokens: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """The chat of one all-at-once simulation prompt for the displayed ``tokens``."""
    messages: list[tuple[str, str]] = [("system", _SIMULATION_SYSTEM)]
    for shot_explanation, shot_tokens, shot_values in _SIMULATION_SHOTS:
        messages.append(("user", _document(shot_explanation, shot_tokens, None)))
        messages.append(("assistant", _document(shot_explanation, shot_tokens, shot_values)))
    messages.append(("user", _document(explanation, tokens, None)))
    return tuple(messages)


_LOGPROB_SYSTEM = """We study latents of a neural network. A latent looks for something particular in a short document. Read the explanation of a latent and predict how strongly it fires on each token.

Activations are written as token<tab>activation, one token per line, from 0 (silent) to 10 (strongest); "unknown" marks an activation still to predict. Most activations are 0."""

UNKNOWN = "unknown"
"""The placeholder of an activation to predict (delphi's ``UNKNOWN_ACTIVATION_STRING``)."""

_LATENT = "\n\nLatent {index}\nExplanation of latent {index}: {explanation}"


def _tab_lines(sequences: Sequence[tuple[Sequence[str], Sequence[int] | None]]) -> str:
    """``\\nActivations: `` and each sequence's ``token<tab>value`` lines between ``<start>`` and
    ``<end>`` lines (``unknown`` where its values are None)."""
    blocks = []
    for tokens, values in sequences:
        shown = values if values is not None else [UNKNOWN] * len(tokens)
        blocks.append("\n".join(f"{t}\t{v}" for t, v in zip(tokens, shown, strict=True)))
    return "\nActivations: \n<start>\n" + "\n<end>\n<start>\n".join(blocks) + "\n<end>\n"


def simulation_logprob_messages(
    explanation: str, sequences: Sequence[Sequence[str]]
) -> tuple[tuple[str, str], ...]:
    """The chat of one expected-value simulation prompt for the displayed tokens of one or
    more ``sequences``: its last ``sum(len(s))`` tab-``unknown`` pairs are the positions whose
    log-probabilities are read, sequence by sequence."""
    if isinstance(sequences, str) or any(isinstance(tokens, str) for tokens in sequences):
        raise TypeError("simulation_logprob_messages takes sequences of tokens, not strings")
    messages: list[tuple[str, str]] = [("system", _LOGPROB_SYSTEM)]
    for index, (shot_explanation, shot_tokens, shot_values) in enumerate(_SIMULATION_SHOTS, 1):
        messages.append(("user", _LATENT.format(index=index, explanation=shot_explanation)))
        messages.append(("assistant", _tab_lines([(shot_tokens, shot_values)])))
    index = len(_SIMULATION_SHOTS) + 1
    messages.append(("user", _LATENT.format(index=index, explanation=explanation.strip())))
    messages.append(("assistant", _tab_lines([(tokens, None) for tokens in sequences])))
    return tuple(messages)


def simulation_schema(n_tokens: int) -> dict[str, Any]:
    """The answer schema under ``structured_output``: the document with ``n_tokens`` filled
    activations (integers 0-10)."""
    entry = {
        "type": "object",
        "properties": {
            "token": {"type": "string"},
            "activation": {"type": "integer", "minimum": 0, "maximum": 10},
        },
        "required": ["token", "activation"],
    }
    return {
        "type": "object",
        "properties": {
            "to_find": {"type": "string"},
            "document": {"type": "string"},
            "activations": {
                "type": "array",
                "items": entry,
                "minItems": n_tokens,
                "maxItems": n_tokens,
            },
        },
        "required": ["activations"],
    }
