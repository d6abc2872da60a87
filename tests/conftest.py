"""Shared fixtures: tiny randomly initialised models (Llama-shaped and BLOOM-shaped) with a
small byte-level BPE tokenizer trained on the spot, so unit tests take seconds and never
touch a model hub."""

import json
from pathlib import Path

import httpx
import openai
import pytest

CORPUS = [
    "Subject: Meet the bamboo toothbrush. Hi there, our new product is here.",
    "Below is an instruction that describes a task. Write a response.",
    "### Instruction: ### Input: ### Response: ### Product ### Description ### Email",
    "The quick brown fox jumps over the lazy dog 0123456789 !?.,:;'\"()[]{}<>-_/@#",
    "Best regards, The Team. Order today and save 20 percent on your first purchase.",
]
CHAT_TEMPLATE = (  # writes tool calls, as function-calling models' templates do
    "{% if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% for call in m.get('tool_calls') or [] %}<call>{{ call['function']['name'] }}"
    "{{ call['function']['arguments'] | tojson }}</call>{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_tiny_model(folder: Path, arch: str) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, BloomConfig, LlamaConfig

    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    common = dict(
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            **common,
        )
    elif arch == "bloom":
        config = BloomConfig(hidden_size=64, n_layer=2, n_head=4, **common)
    else:
        raise ValueError(arch)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def tiny_bloom(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-bloom", "bloom")


EMAIL_ROWS = [
    {
        "product": f"Product {i}",
        "description": f"A fine thing number {i} for your home.",
        "email": f"Subject: Meet Product {i}\nHi there,\nProduct {i} is here. Order today!\n"
        "Best regards,\nThe Team",
    }
    for i in range(12)
]


@pytest.fixture
def email_jsonl(tmp_path) -> Path:
    path = tmp_path / "emails.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EMAIL_ROWS))
    return path


EMAIL_TEMPLATE = {
    "prompt": "### Product\n{{ product }}\n\n### Description\n{{ description }}\n\n### Email\n",
    "response": "{{ email }}",
}


@pytest.fixture(scope="session", autouse=True)
def data_dirs_cover_test_files(tmp_path_factory):
    """Tests write their data files under pytest's temporary folders and read the bundled
    examples: those are the trainer's data folders (TUNEYARD_DATA_DIRS) in every service
    the suite starts, in-process or as a child process. Tests of the folders' own rules
    set their own."""
    import os

    from trainer_service.data_roots import EXAMPLES_DIR

    roots = [str(tmp_path_factory.getbasetemp()), str(EXAMPLES_DIR)]
    previous = os.environ.get("TUNEYARD_DATA_DIRS")
    os.environ["TUNEYARD_DATA_DIRS"] = os.pathsep.join(roots)
    yield
    if previous is None:
        os.environ.pop("TUNEYARD_DATA_DIRS", None)
    else:
        os.environ["TUNEYARD_DATA_DIRS"] = previous


@pytest.fixture
def make_gateway():
    """Start gateways with settings overrides; all stopped at the end of the test."""
    from tests.support.services import start_gateway  # the gateway's imports, when used

    started = []

    def make(**overrides):
        started.append(start_gateway(**overrides))
        return started[-1]

    yield make
    for gateway in started:
        gateway.stop()


# Clients of the `gateway` fixture a test package defines (a gateway over its backends).
@pytest.fixture
def http(gateway):
    with httpx.Client(base_url=gateway.url, timeout=60) as client:
        yield client


@pytest.fixture
def oai(gateway):
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
