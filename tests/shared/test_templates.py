import copy
import time

import pytest

from tuneyard import templates
from tuneyard.errors import InvalidArgument
from tuneyard.templates import PromptTemplate, TemplateRefused


def test_alpaca_renders_with_and_without_context():
    template = PromptTemplate.builtin("alpaca")
    without = template.render_prompt({"instruction": "Name a fruit."})
    with_ctx = template.render_prompt({"instruction": "Summarise.", "context": "A long text."})
    assert "### Instruction:\nName a fruit." in without
    assert "### Input:" not in without
    assert "### Input:\nA long text." in with_ctx
    assert with_ctx.endswith("### Response:\n")
    assert template.render_response({"response": "Apple"}) == "Apple"


def test_fields_split_into_prompt_and_response():
    template = PromptTemplate("P: {{ product }} / {{ description }}\n", "{{ email }}")
    assert template.prompt_fields == {"product", "description"}
    assert template.response_fields == {"email"}
    assert template.fields == {"product", "description", "email"}


def test_missing_printed_field_names_it():
    template = PromptTemplate("{{ product }}", "{{ email }}")
    with pytest.raises(InvalidArgument, match="'product' is undefined"):
        template.render_prompt({"email": "x"})


def test_bad_jinja_is_refused_with_the_part_named():
    with pytest.raises(InvalidArgument, match=r"template.prompt is not valid Jinja") as err:
        PromptTemplate("{{ product", "{{ email }}")
    assert err.value.param == "template.prompt"


def test_hash_changes_with_either_part():
    a = PromptTemplate("{{ a }}", "{{ b }}")
    assert a.sha256 == PromptTemplate("{{ a }}", "{{ b }}").sha256
    assert a.sha256 != PromptTemplate("{{ a }} ", "{{ b }}").sha256
    assert a.sha256 != PromptTemplate("{{ a }}", "{{ b }}!").sha256


def test_unknown_builtin():
    with pytest.raises(InvalidArgument, match="unknown template 'nope'; built-in: alpaca"):
        PromptTemplate.builtin("nope")


# --- the sandbox: templates are data from users --------------------------------------------
ISSUE_PAYLOAD = (
    "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
    "{% if c.__name__ == '_wrap_close' %}{{ c.__init__.__globals__['mkdir'](PATH) }}"
    "{% endif %}{% endfor %}{{ product }}"
)
ESCAPES = [
    ISSUE_PAYLOAD,
    "{{ product.__class__.__mro__ }}",
    "{{ product['__class__'] }}",
    "{{ product|attr('__class__') }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ lipsum.__globals__['os'] }}",
    "{{ namespace.__init__ }}",
    "{{ range(3) }}",
    "{{ self._TemplateReference__context }}",
    "{{ self }}",
    "{{ '{0.__class__}'.format(product) }}",
    "{{ product.format_map({}) }}",
    "{{ product.encode() }}",
    "{{ product|map('upper')|list }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{% include 'other' %}",
    "{% import 'other' as o %}",
    "{% extends 'base' %}",
    "{% for x in product recursive %}{{ loop(x) }}{% endfor %}",
    "{% call product.strip() %}{% endcall %}",
    "{{ '%s' % product }}",
    "{{ 2 ** 999999 }}",
]


@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_are_refused_and_run_nothing(source, tmp_path):
    canary = tmp_path / "created-by-template"
    source = source.replace("PATH", repr(str(canary)))
    with pytest.raises(TemplateRefused) as err:
        template = PromptTemplate(source, "{{ email }}")
        template.render_prompt({"product": "x", "email": "y"})
    assert err.value.param == "template.prompt"
    assert err.value.http_status == 422
    assert not canary.exists()


def test_a_refused_response_template_names_template_response():
    with pytest.raises(TemplateRefused) as err:
        PromptTemplate("{{ product }}", "{{ email.__class__ }}")
    assert err.value.param == "template.response"


@pytest.mark.parametrize(
    ("source", "why"),
    [
        ("{{ product * 100000000 }}", "renders more than"),
        ("{{ product|replace('', product) }}", "renders more than"),
        ("{{ product ~ product ~ product ~ product ~ product }}", "renders more than"),
        ("{% for c in product %}{{ product }}{% endfor %}", "renders more than"),
        (
            "{% for a in product %}{% for b in product %}{% for c in product %}"
            "{% endfor %}{% endfor %}{% endfor %}",
            "takes longer than",
        ),
    ],
)
def test_a_render_over_budget_is_refused(source, why, monkeypatch):
    monkeypatch.setattr(templates, "MAX_RENDER_SECONDS", 0.2)
    template = PromptTemplate(source, "{{ email }}")
    started = time.monotonic()
    with pytest.raises(TemplateRefused, match=why) as err:
        template.render_prompt({"product": "x" * (templates.MAX_RENDERED_CHARS // 4 + 1)})
    assert err.value.param == "template.prompt"
    assert time.monotonic() - started < 5


def test_a_template_over_the_length_limit_is_refused():
    with pytest.raises(TemplateRefused, match="the limit is"):
        PromptTemplate("x" * (templates.MAX_TEMPLATE_CHARS + 1), "{{ email }}")


def test_a_render_error_names_the_part_and_is_not_a_crash():
    template = PromptTemplate("{{ 1/0 }}{{ product }}", "{{ email }}")
    with pytest.raises(InvalidArgument, match="ZeroDivisionError") as err:
        template.render_prompt({"product": "x"})
    assert err.value.param == "template.prompt"


def test_what_templates_do_use_still_renders():
    template = PromptTemplate(
        "{% for m in messages %}{{ loop.index }}. {{ m.role|upper }}: {{ m.content.strip() }}\n"
        "{% endfor %}{% if context %}{{ context|trim }}{% endif %}"
        "{{ tags|join(', ') }} {{ product|default('none')|truncate(9) }} {{ product ~ '!' }}"
        "{{ product|replace('a', 'o') }}{{ meta.get('lang', 'en') }} {{ product|length }}",
        "{{ email }}",
    )
    row = {
        "messages": [{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}],
        "tags": ["a", "b"],
        "product": "banana",
        "meta": {},
    }
    assert template.render_prompt(row) == (
        "1. USER: hi\n2. ASSISTANT: yo\na, b banana banana!bononoen 6"
    )


CONVERSATION = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there", "weight": 0},
    {"role": "user", "content": "Order today"},
    {"role": "assistant", "content": "Best regards"},
]


def test_a_chat_row_trains_each_assistant_turn_unless_its_weight_is_0():
    from tests.conftest import make_tokenizer
    from tuneyard.templates import ChatTemplate

    chat = ChatTemplate(make_tokenizer())
    [(prompt, completion)] = chat.trained_turns({"messages": CONVERSATION})
    assert "Hello there" in prompt and prompt.endswith("<|im_start|>assistant\n")
    assert completion == "Best regards<|im_end|>\n"
    assert "weight" not in prompt  # the key is OpenAI's, never the template's
    both = [{**m, "weight": 1} if m["role"] == "assistant" else m for m in CONVERSATION]
    turns = chat.trained_turns({"messages": both})
    assert [c for _, c in turns] == ["Hello there<|im_end|>\n", "Best regards<|im_end|>\n"]
    assert turns[0][0] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # The last turn is still what render_prompt / render_response give (evaluation).
    assert chat.render_response({"messages": both}) == "Best regards<|im_end|>\n"
    tools = [{"type": "function", "function": {"name": "order"}}]
    [(with_tools, _)] = chat.trained_turns({"messages": CONVERSATION, "tools": tools})
    assert with_tools.startswith("<|im_start|>system\nTools: ") and '"order"' in with_tools


# A chat template that ignores tool calls, as many small models' do.
TEXT_ONLY_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CALL = {"id": "c1", "type": "function", "function": {"name": "order", "arguments": '{"n": 2}'}}
TOOL_ROW = {
    "messages": [
        {
            "role": "system",
            "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        },
        {"role": "user", "content": "Two lamps"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "ordered"},
        {"role": "assistant", "content": [{"type": "text", "text": "Done."}]},
    ],
    "tools": [{"type": "function", "function": {"name": "order"}}],
}


def test_a_chat_row_with_tool_calls_and_text_parts_trains_every_assistant_turn():
    from tests.conftest import make_tokenizer
    from tuneyard.templates import ChatTemplate

    chat = ChatTemplate(make_tokenizer())  # the fixtures' template writes tool calls
    (call_prompt, call), (answer_prompt, answer) = chat.trained_turns(TOOL_ROW)
    assert call_prompt.startswith('<|im_start|>system\nTools: [{"type": "function"')
    assert "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n" in call_prompt
    assert call == '<call>order{"n": 2}</call><|im_end|>\n'  # arguments as an object
    assert "<|im_start|>tool\nordered<|im_end|>" in answer_prompt and answer == "Done.<|im_end|>\n"
    # The legacy function_call and function role read as a tool call and a tool result.
    legacy = copy.deepcopy(TOOL_ROW)
    legacy["messages"][2] = {
        "role": "assistant",
        "content": None,
        "function_call": CALL["function"],
    }
    legacy["messages"][3] = {"role": "function", "name": "order", "content": "ordered"}
    assert [c for _, c in chat.trained_turns(legacy)] == [call, answer]


def test_a_chat_template_that_drops_tool_calls_is_refused_not_trained_empty():
    from tests.conftest import make_tokenizer
    from tuneyard.templates import ChatTemplate

    tokenizer = make_tokenizer()
    tokenizer.chat_template = TEXT_ONLY_TEMPLATE
    chat = ChatTemplate(tokenizer)
    with pytest.raises(
        InvalidArgument, match="does not write an assistant message's tool_calls"
    ) as err:
        chat.trained_turns(TOOL_ROW)
    assert err.value.param == "template.builtin"


@pytest.mark.parametrize(
    "messages, tools, needle",
    [
        ([{"role": "user", "content": "a", "weight": 1}, *CONVERSATION[1:]], None, "assistant"),
        (
            [
                {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
                *CONVERSATION[1:],
            ],
            None,
            "messages.0..content.0. must be a text part to train on \\(got 'image_url'\\)",
        ),
        ([{"role": "user", "content": None}, *CONVERSATION[1:]], None, "string or a list of text"),
        (
            [{"role": "user", "content": "a", "tool_calls": [CALL]}, *CONVERSATION[1:]],
            None,
            "assistant messages only",
        ),
        (
            [
                *CONVERSATION,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{**CALL, "function": {"name": "o", "arguments": "{"}}],
                },
            ],
            None,
            "tool_calls.0..function.arguments must be a JSON object",
        ),
        (
            [
                *CONVERSATION,
                {"role": "assistant", "content": None, "tool_calls": [{"type": "function"}]},
            ],
            None,
            "string 'name'",
        ),
        ([*CONVERSATION[:3], {**CONVERSATION[3], "weight": 2}], None, "0 or 1"),
        ([*CONVERSATION[:3], {**CONVERSATION[3], "weight": True}], None, "0 or 1"),
        ([*CONVERSATION[:3], {**CONVERSATION[3], "weight": 0}], None, "nothing to train on"),
        (CONVERSATION, {"type": "function"}, "'tools' must be a list"),
    ],
)
def test_a_bad_chat_row_is_refused_with_the_reason(messages, tools, needle):
    row = {"messages": messages, **({"tools": tools} if tools is not None else {})}
    with pytest.raises(InvalidArgument, match=needle):
        templates.chat_messages(row)
