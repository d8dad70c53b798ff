"""Chat templates: built-ins equal llama.cpp's reference formatting (expected strings from llama.cpp's
tests/test-chat-template.cpp, whose conversation is used here), detection heuristics, Jinja rendering in the
sandbox, clear errors for raise_exception / unknown filters / unsafe access, incremental formatting."""

import pytest

from llamacpy.chat import (
    BUILTINS,
    ChatTemplate,
    ChatTemplateError,
    detect_template,
    render_jinja,
    template_from_name,
)

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]

# llama.cpp's expected_output for each built-in on CONVERSATION with add_generation_prompt (add_ass) = true.
EXPECTED = {
    "chatml": "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
              "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n"
              "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n<|im_start|>user\nAnother question<|im_end|>\n"
              "<|im_start|>assistant\n",
    "llama2": "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]   I am an "
              "assistant   </s>[INST] Another question [/INST]",
    "llama2-sys-bos": "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s><s>[INST] Who "
                      "are you [/INST]   I am an assistant   </s><s>[INST] Another question [/INST]",
    "llama2-sys-strip": "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who "
                        "are you [/INST]I am an assistant</s>[INST] Another question [/INST]",
    "mistral-v1": " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]    I am "
                  "an assistant   </s> [INST] Another question [/INST]",
    "mistral-v3": "[INST] You are a helpful assistant\n\nHello[/INST] Hi there</s>[INST] Who are you[/INST] I am an "
                  "assistant</s>[INST] Another question[/INST]",
    "mistral-v3-tekken": "[INST]You are a helpful assistant\n\nHello[/INST]Hi there</s>[INST]Who are you[/INST]   I am "
                         "an assistant   </s>[INST]Another question[/INST]",
    "mistral-v7": "[SYSTEM_PROMPT] You are a helpful assistant[/SYSTEM_PROMPT][INST] Hello[/INST] Hi there</s>[INST] "
                  "Who are you[/INST]    I am an assistant   </s>[INST] Another question[/INST]",
    # not in b4748's test-chat-template.cpp: the format of llama.cpp's llm_chat_apply_template for
    # LLM_CHAT_TEMPLATE_MISTRAL_V7_TEKKEN (v7 without the spaces), as in the llama.cpp llama-cpp-python 0.3.36 vendors
    "mistral-v7-tekken": "[SYSTEM_PROMPT]You are a helpful assistant[/SYSTEM_PROMPT][INST]Hello[/INST]Hi there</s>"
                         "[INST]Who are you[/INST]   I am an assistant   </s>[INST]Another question[/INST]",
    "llama3": "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant<|eot_id|><|start_header_id|>"
              "user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nHi there"
              "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWho are you<|eot_id|><|start_header_id|>assistant"
              "<|end_header_id|>\n\nI am an assistant<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nAnother "
              "question<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "zephyr": "<|system|>\nYou are a helpful assistant<|endoftext|>\n<|user|>\nHello<|endoftext|>\n<|assistant|>\nHi "
              "there<|endoftext|>\n<|user|>\nWho are you<|endoftext|>\n<|assistant|>\n   I am an assistant   "
              "<|endoftext|>\n<|user|>\nAnother question<|endoftext|>\n<|assistant|>\n",
    "vicuna": "You are a helpful assistant\n\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\nASSISTANT:    I "
              "am an assistant   </s>\nUSER: Another question\nASSISTANT:",
    "vicuna-orca": "SYSTEM: You are a helpful assistant\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\n"
                   "ASSISTANT:    I am an assistant   </s>\nUSER: Another question\nASSISTANT:",
    "phi3": "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n"
            "<|user|>\nWho are you<|end|>\n<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question"
            "<|end|>\n<|assistant|>\n",
    "gemma": "<start_of_turn>user\nYou are a helpful assistant\n\nHello<end_of_turn>\n<start_of_turn>model\nHi there"
             "<end_of_turn>\n<start_of_turn>user\nWho are you<end_of_turn>\n<start_of_turn>model\nI am an assistant"
             "<end_of_turn>\n<start_of_turn>user\nAnother question<end_of_turn>\n<start_of_turn>model\n",
    "monarch": "system\nYou are a helpful assistant</s>\n<s>user\nHello</s>\n<s>assistant\nHi there</s>\n<s>user\nWho "
               "are you</s>\n<s>assistant\n   I am an assistant   </s>\n<s>user\nAnother question</s>\n<s>assistant\n",
    "deepseek": "You are a helpful assistant### Instruction:\nHello\n### Response:\nHi there\n<|EOT|>\n### Instruction:"
                "\nWho are you\n### Response:\n   I am an assistant   \n<|EOT|>\n### Instruction:\nAnother question\n"
                "### Response:\n",
    "openchat": "You are a helpful assistant<|end_of_turn|>GPT4 Correct User: Hello<|end_of_turn|>GPT4 Correct "
                "Assistant: Hi there<|end_of_turn|>GPT4 Correct User: Who are you<|end_of_turn|>GPT4 Correct "
                "Assistant:    I am an assistant   <|end_of_turn|>GPT4 Correct User: Another question<|end_of_turn|>"
                "GPT4 Correct Assistant:",
}

# Real-world Jinja templates (from llama.cpp's test) and the built-in llama.cpp detects for each.
JINJA = {
    "chatml": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
              "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
              "{% endif %}",
    "llama2": "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0)"
              " %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
              "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
              "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
              "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}",
    "llama3": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
              "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
              "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
              "{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}",
    "vicuna": "{%- for message in messages %}{%- if message['role'] == 'system' -%}{{- '' + message['content'] + "
              "'\n\n' -}}{%- else -%}{%- if message['role'] == 'user' -%}{{-'USER: ' + message['content'] + '\n'-}}"
              "{%- else -%}{{-'ASSISTANT: ' + message['content'] + '</s>\n' -}}{%- endif -%}{%- endif -%}"
              "{%- endfor -%}{%- if add_generation_prompt -%}{{-'ASSISTANT:'-}}{%- endif -%}",
    "gemma": "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
             "{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}"
             "{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | "
             "trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}"
             "{% endif %}",
    "llama2-sys-strip": "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                        "{{ '[INST] ' + content.strip() + ' [/INST]' }}{% endif %}{% endfor %}<<SYS>>",
    "mistral-v1": "{{- bos_token }}{%- for message in loop_messages %}{{- ' [INST] ' + system_message + '\\n\\n' + "
                  "message['content'] + ' [/INST]' }}{%- endfor %}",
    "zephyr": "{% for message in messages %}{{ '<|user|>\n' + message['content'] + '<|endoftext|>' }}{% endfor %}",
    "monarch": "{% for message in messages %}{{bos_token + message['role'] + '\\n' + message['content'] + eos_token + "
               "'\\n'}}{% endfor %}",
    "deepseek": "{{'### Instruction:\\n' + message['content'] + '\\n'}}{{'### Response:\\n' + message['content'] + "
                "'\\n<|EOT|>\\n'}}",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_matches_llama_cpp(name):
    assert ChatTemplate(builtin=name).apply(CONVERSATION, add_generation_prompt=True) == EXPECTED[name]


def test_every_builtin_is_covered():
    assert set(BUILTINS) - set(EXPECTED) <= {"llama2-sys"}
    for required in ("llama2", "llama3", "chatml", "mistral-v1", "zephyr", "vicuna"):
        assert required in BUILTINS


def test_four_turn_conversation_bos_eos():
    """(system, user, assistant, user): no BOS in the text (the tokenizer adds it), EOS text closes assistant
    turns where the format has one, the generation prompt is appended."""
    conv = CONVERSATION[:4]
    assert ChatTemplate(builtin="llama2").apply(conv) == \
        "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>[INST] Who are you [/INST]"
    assert ChatTemplate(builtin="llama2-sys").apply(conv) == \
        "[INST] <<SYS>>\nYou are a helpful assistant\n<</SYS>>\n\nHello [/INST]Hi there</s>[INST] Who are you [/INST]"
    assert ChatTemplate(builtin="chatml").apply(conv, add_generation_prompt=False) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi there<|im_end|>\n<|im_start|>user\nWho are you<|im_end|>\n")
    assert ChatTemplate(builtin="zephyr").apply(conv).endswith("<|user|>\nWho are you<|endoftext|>\n<|assistant|>\n")
    assert ChatTemplate(builtin="vicuna").apply(conv) == \
        "You are a helpful assistant\n\nUSER: Hello\nASSISTANT: Hi there</s>\nUSER: Who are you\nASSISTANT:"
    assert ChatTemplate(builtin="mistral-v1").apply(conv) == \
        " [INST] You are a helpful assistant\n\nHello [/INST] Hi there</s> [INST] Who are you [/INST]"
    assert ChatTemplate(builtin="llama3").apply(conv).startswith("<|start_header_id|>system<|end_header_id|>\n\n")


@pytest.mark.parametrize("expected_name", sorted(JINJA))
def test_detection_from_template_text(expected_name):
    assert detect_template(JINJA[expected_name]) == expected_name


def test_detection_of_names():
    assert detect_template("chatml") == "chatml"
    assert detect_template("mistral") == "llama2"  # as llama.cpp: the name goes through the [INST] heuristics
    assert detect_template("{{ 'plain' }}") is None
    assert template_from_name("mistral").builtin == "llama2"
    with pytest.raises(ChatTemplateError, match="unknown chat template 'nonsense'"):
        template_from_name("nonsense")


@pytest.mark.parametrize("name", ["chatml", "llama3", "vicuna"])
def test_jinja_renders_like_the_builtin(name):
    t = ChatTemplate(source=JINJA[name], bos_token="<s>", eos_token="</s>", strip_bos=True)
    assert t.apply(CONVERSATION) == EXPECTED[name]


def test_jinja_bos_stripped_once_eos_kept():
    """The tokenizer adds BOS, so a template's leading bos_token is removed (llama.cpp does the same);
    eos_token inside the history stays."""
    conv = CONVERSATION[1:4]
    t = ChatTemplate(source=JINJA["llama2"], bos_token="<s>", eos_token="</s>", strip_bos=True)
    assert t.apply(conv) == "[INST] Hello [/INST]Hi there</s>[INST] Who are you [/INST]"
    t.strip_bos = False
    assert t.apply(conv) == "<s>[INST] Hello [/INST]Hi there</s>[INST] Who are you [/INST]"


def test_jinja_hf_globals_and_filters():
    src = ("{{ messages | tojson }}|{{ strftime_now('%Y') | length }}|{% for m in messages %}{% if loop.first %}"
           "{% continue %}{% endif %}{{ m.content.upper() }}{% endfor %}")
    out = render_jinja(src, [{"role": "user", "content": "é"}, {"role": "user", "content": "x"}], True)
    assert out == '[{"role": "user", "content": "é"}, {"role": "user", "content": "x"}]|4|X'


def test_raise_exception_is_a_clear_error():
    t = ChatTemplate(source=JINJA["gemma"])
    with pytest.raises(ChatTemplateError, match="chat template raised an exception: System role not supported"):
        t.apply(CONVERSATION)
    assert t.apply(CONVERSATION[1:]).startswith("<start_of_turn>user\nHello<end_of_turn>\n")


def test_unknown_filter_and_syntax_errors():
    with pytest.raises(ChatTemplateError, match="does not compile.*No filter named 'shout'"):
        ChatTemplate(source="{{ messages[0].content | shout }}").apply(CONVERSATION)
    with pytest.raises(ChatTemplateError, match="does not compile"):
        ChatTemplate(source="{% for m in messages %}{{ m.content }}").apply(CONVERSATION)
    with pytest.raises(ChatTemplateError, match="failed"):
        ChatTemplate(source="{{ messages[0].content + 1 }}").apply(CONVERSATION)


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__init__.__globals__ }}",
    "{{ cycler.__init__.__globals__.os.popen('echo pwned').read() }}",
    "{% set x = messages.append(1) %}",
])
def test_sandbox_blocks_code_execution(attack):
    with pytest.raises(ChatTemplateError):
        ChatTemplate(source=attack).apply(CONVERSATION)


def test_format_single_deltas():
    """The incremental text of each new message, as llama.cpp's conversation mode evaluates it."""
    t = ChatTemplate(builtin="chatml")
    past: list[dict] = []
    sys_part = t.format_single(past, CONVERSATION[0], add_ass=False)
    assert sys_part == "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
    past.append(CONVERSATION[0])
    user_part = t.format_single(past, CONVERSATION[1], add_ass=True)
    assert user_part == "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"  # system text was evaluated
    past.append(CONVERSATION[1])
    assistant_part = t.format_single(past, CONVERSATION[2], add_ass=False)
    assert assistant_part == "<|im_start|>assistant\nHi there<|im_end|>\n"  # recorded, not evaluated
    past.append(CONVERSATION[2])
    # after the model's turn (it stopped at <|im_end|>) the newline is put back, as llama.cpp's test expects
    assert t.format_single(past, CONVERSATION[3], add_ass=True) == \
        "\n<|im_start|>user\nWho are you<|im_end|>\n<|im_start|>assistant\n"
    llama2 = ChatTemplate(builtin="llama2")
    assert llama2.format_single(past, CONVERSATION[3], add_ass=True) == "[INST] Who are you [/INST]"


def test_content_parts_and_bad_messages():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert ChatTemplate(builtin="chatml").apply(msgs, False) == "<|im_start|>user\nab<|im_end|>\n"
    with pytest.raises(ChatTemplateError):
        ChatTemplate(builtin="chatml").apply([{"content": "no role"}])
    with pytest.raises(ChatTemplateError):
        ChatTemplate(builtin="chatml").apply("not a list")
