"""Evaluating an adapter trained with the `chat` template: chat rows in, prompts rendered by
the base tokenizer's chat template, few-shot examples as earlier turns, the loss on the
assistant's turn as the template writes it, and bad chat rows refused before any
generation, with their line."""

import math
from pathlib import Path

import pytest

from tests.conftest import CHAT_TEMPLATE
from tests.evaluation.conftest import write_jsonl
from tests.evaluation.test_evaluation import inference_requests
from tests.support.adapters import make_adapter
from trainer_service.evaluation.inference import Generation
from trainer_service.evaluation.plan import build_plan
from trainer_service.evaluation.runner import cut_at
from tuneyard.adapter_store import MANIFEST
from tuneyard.errors import FailedPrecondition, InvalidArgument
from tuneyard.modeling import load_tokenizer, resolve_base_model
from tuneyard.statuses import SUCCEEDED
from tuneyard.templates import ChatTemplate
from tuneyard.v1 import evaluation_pb2 as pb

SYSTEM = {"role": "system", "content": "You write short product emails."}
CHAT_ROWS = [
    {
        "messages": [
            SYSTEM,
            {"role": "user", "content": f"Announce Product {i}."},
            {"role": "assistant", "content": f"Subject: Meet Product {i}\nHi there, it is here."},
        ]
    }
    for i in range(8)
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    tokenizer = load_tokenizer(resolve_base_model(str(tiny_llama)))
    assert tokenizer.chat_template == CHAT_TEMPLATE
    return tokenizer


def publish_with_template(tiny_llama, adapters, name, prompt, tokenizer):
    """A LoRA published with the manifest the worker writes for `template: {builtin:
    chat}` (trainer_service/worker/run.py), the template's prompt source swapped in."""
    version = make_adapter(tiny_llama, adapters[0], name, seed=3)
    manifest = version.manifest().model_copy(
        update=dict(
            template_prompt=prompt,
            template_response="",
            template_sha256=ChatTemplate(tokenizer).sha256,
            eos_token=tokenizer.eos_token,
            stop=[tokenizer.eos_token],
        )
    )
    (version.path / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return version


@pytest.fixture(scope="module")
def chat_adapter(tiny_llama, adapters, tokenizer):
    return publish_with_template(tiny_llama, adapters, "chatmail", CHAT_TEMPLATE, tokenizer)


@pytest.fixture(scope="module")
def chat_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("chat")
    return (
        write_jsonl(folder / "heldout.jsonl", CHAT_ROWS[:3]),
        write_jsonl(folder / "train.jsonl", CHAT_ROWS[3:]),
    )


def chat_spec(chat_files, **fields) -> pb.EvaluationSpec:
    values = dict(
        adapter_id="chatmail",
        eval_file=str(chat_files[0]),
        few_shot_file=str(chat_files[1]),
        max_new_tokens=6,
        checks=[pb.Check(type="rouge_l"), pb.Check(type="contains", value="Subject:")],
    )
    values.update(fields)
    return pb.EvaluationSpec(**values)


def plan_for(service, spec, tokenizer):
    return build_plan(
        spec,
        service.adapters,
        service.jobs,
        service.files_root,
        service.settings.resolved_trainer_workdir,
        lambda _: tokenizer,
    )


def test_a_chat_adapter_is_evaluated_on_every_arm(
    make_service, chat_adapter, chat_files, tokenizer
):
    service = make_service()
    service.start()
    created = service.create(chat_spec(chat_files))
    evaluation = service.wait(created.id, timeout=60)
    assert evaluation.status == SUCCEEDED, evaluation.error
    arms = evaluation.result["arms"]
    assert [(a["name"], a["adapter_id"], a["shots"]) for a in arms] == [
        ("zero_shot", "", 0),
        ("few_shot", "", 3),
        ("adapter", chat_adapter.id, 0),
    ]
    for arm in arms:
        assert math.isfinite(arm["eval_loss"]) and arm["eval_loss"] > 0
        assert set(arm["checks"]) == {"rouge_l", "contains"}
        assert 0 < arm["mean_output_tokens"] <= 6

    # The prompt: every turn but the last through the chat template, then the generation
    # prompt; the examples' reference is the assistant's content.
    examples = evaluation.result["examples"]
    for example, row in zip(examples, CHAT_ROWS[:3], strict=True):
        assert example["prompt"] == tokenizer.apply_chat_template(
            row["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        assert example["prompt"].endswith("<|im_start|>assistant\n")
        assert example["reference"] == row["messages"][-1]["content"]

    # The loss scores the assistant's turn as the template writes it: content, then the
    # end-of-turn marker and its newline.
    def count(text):
        return len(tokenizer(text)["input_ids"])

    written = [
        count(e["prompt"] + e["reference"] + "<|im_end|>\n") - count(e["prompt"]) for e in examples
    ]
    assert arms[0]["loss_tokens"] == arms[2]["loss_tokens"] == sum(written)
    # Few-shot answers the same references after longer prompts.
    assert arms[1]["loss_tokens"] == arms[0]["loss_tokens"]

    settings = Path(evaluation.report_markdown).read_text(encoding="utf-8")
    assert "training conversations as earlier turns" in settings and "<|im_end|>" in settings


def test_few_shot_conversations_are_earlier_turns(
    make_service, chat_adapter, chat_files, tokenizer
):
    plan = plan_for(make_service(), chat_spec(chat_files, few_shot_k=2), tokenizer)
    case = plan.cases[0]
    assert case.reference == CHAT_ROWS[0]["messages"][-1]["content"] + "<|im_end|>\n"
    assert case.expected == CHAT_ROWS[0]["messages"][-1]["content"]

    few_shot = plan.prompt(plan.arms[1], case, 2)
    shots = [turn for shot in plan.shots for turn in shot]
    assert [t["role"] for t in shots] == ["user", "assistant"] * 2
    # Rendered by the chat template, not joined as strings: system turn first, the shots,
    # then the eval conversation's own turns and the generation prompt.
    messages = CHAT_ROWS[0]["messages"]
    assert few_shot == tokenizer.apply_chat_template(
        [messages[0], *shots, *messages[1:-1]], tokenize=False, add_generation_prompt=True
    )
    assert few_shot.count("<|im_start|>system") == 1
    assert few_shot.count("<|im_start|>assistant\n") == 3  # two shots' answers + the prompt
    for turn in shots:
        assert turn["content"] in few_shot
        assert turn["content"] not in case.prompt
    assert "Product 0\n" not in few_shot  # never the eval row's own answer
    assert plan.prompt(plan.arms[1], case, 0) == case.prompt
    # Every arm stops at the end of the assistant's turn.
    assert plan.turn_end.text == "<|im_end|>"
    assert plan.turn_end.token_ids == {tokenizer.convert_tokens_to_ids("<|im_end|>")}
    assert all(plan.stop(arm)[-1] == "<|im_end|>" for arm in plan.arms)


def test_an_answer_ends_at_the_special_end_of_turn_token(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tokens = ((5, "Hi"), (6, " there"), (end, ""), (7, "\nuser"), (8, " more"))
    generation = Generation("Hi there\nuser more", 10, 5, 0.1, tokens)
    cut = cut_at(generation, frozenset({end}))
    assert (cut.text, cut.output_tokens, cut.prompt_tokens) == ("Hi there", 3, 10)
    assert cut_at(generation, frozenset({999})) == generation


def test_generated_tokens_spell_the_text(make_service, chat_adapter, tokenizer):
    """What cut_at relies on, from the real engine: the tokens' texts make up the text."""
    client = make_service()._client()
    try:
        prompt = tokenizer.apply_chat_template(
            CHAT_ROWS[0]["messages"][:-1], tokenize=False, add_generation_prompt=True
        )
        generation = client.generate(prompt, chat_adapter.id, {"max_new_tokens": 12})
    finally:
        client.close()
    assert len(generation.tokens) == generation.output_tokens > 1
    # The eos ends a generation but is not part of its text.
    texts = [text for i, text in generation.tokens if i != tokenizer.eos_token_id]
    assert "".join(texts) == generation.text


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"prompt": "no messages"}, "'messages' must be a non-empty list"),
        ({"messages": []}, "'messages' must be a non-empty list"),
        ({"messages": "hello"}, "'messages' must be a non-empty list"),
        (
            {"messages": [{"role": "user", "content": "Hi"}]},
            "the last message must be the assistant's (got 'user')",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": 3}]},
            "messages[1].content must be a string or a list of text parts",
        ),
        ({"messages": [{"content": "Hi"}]}, "messages[0] needs a string 'role'"),
    ],
)
@pytest.mark.parametrize("file", ["eval_file", "few_shot_file"])
def test_bad_chat_rows_fail_before_any_generation(
    make_service, chat_adapter, chat_files, inference, tmp_path, bad, words, file
):
    path = write_jsonl(tmp_path / "bad.jsonl", [CHAT_ROWS[0], bad])
    service = make_service()
    before = inference_requests(inference)
    with pytest.raises(InvalidArgument) as err:
        service.create(chat_spec(chat_files, **{file: str(path)}))
    assert err.value.line == 2 and err.value.param == file
    assert f"{file} line 2: {words}" in err.value.message
    assert inference_requests(inference) == before
    assert service.list_evaluations() == ([], False)


def test_an_adapter_without_a_response_or_chat_template_is_refused(
    make_service, tiny_llama, adapters, chat_files, tokenizer
):
    publish_with_template(tiny_llama, adapters, "prompt-only", "{{ text }}", tokenizer)
    with pytest.raises(FailedPrecondition) as err:
        make_service().create(chat_spec(chat_files, adapter_id="prompt-only"))
    assert "prompt-only@" in err.value.message and "no response template" in err.value.message


def test_the_chat_templates_own_error_names_the_row(make_service, tiny_llama, adapters, tmp_path):
    """A chat template that checks the turns itself (raise_exception) fails the row."""
    strict = load_tokenizer(resolve_base_model(str(tiny_llama)))
    strict.chat_template = CHAT_TEMPLATE.replace(
        "{% for m in messages %}",
        "{% for m in messages %}{% if m['role'] == 'tool' %}"
        "{{ raise_exception('no tool turns') }}{% endif %}",
    )
    version = publish_with_template(
        tiny_llama, adapters, "strictchat", strict.chat_template, strict
    )
    row = {"messages": [{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}]}
    path = write_jsonl(tmp_path / "eval.jsonl", [CHAT_ROWS[0], row])
    spec = pb.EvaluationSpec(adapter_id=version.id, eval_file=str(path), arms=["adapter"])
    with pytest.raises(InvalidArgument) as err:
        plan_for(make_service(), spec, strict)
    assert err.value.line == 2
    assert "eval_file line 2: the chat template does not render it" in err.value.message
    assert "no tool turns" in err.value.message
    # The base tokenizer's own template is not the one trained with: refused.
    with pytest.raises(FailedPrecondition, match="no response template"):
        plan_for(make_service(), spec, load_tokenizer(resolve_base_model(str(tiny_llama))))
