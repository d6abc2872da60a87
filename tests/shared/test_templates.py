import pytest

from tuneyard.errors import InvalidArgument
from tuneyard.templates import PromptTemplate


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
