import pytest

from services.api.schemas import ApiError, ChatBody, CompletionBody

CHAT = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(("fields", "param"), [
    ({"top_p": 0.9}, "top_p"),
    ({"n": 2}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logprobs": True}, "logprobs"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
])
def test_unsupported_options_are_refused_with_their_parameter(fields, param):
    with pytest.raises(ApiError) as err:
        ChatBody(messages=CHAT, **fields).refuse_unsupported()
    assert err.value.status == 400 and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


def test_defaults_and_neutral_values_are_accepted():
    body = ChatBody(messages=CHAT, top_p=1.0, stop="x", unknown_field=3)
    body.refuse_unsupported()
    assert body.stops() == ["x"] and body.temperature == 1.0


@pytest.mark.parametrize(("prompt", "expected"), [("abc", "abc"), (["abc"], "abc"), ([5, 6], [5, 6])])
def test_completion_prompts_are_one_text_or_one_list_of_ids(prompt, expected):
    assert CompletionBody(prompt=prompt).prompt_text_or_ids() == expected


@pytest.mark.parametrize("prompt", ["", [], ["a", "b"]])
def test_empty_or_batched_prompts_are_refused(prompt):
    with pytest.raises(ApiError) as err:
        CompletionBody(prompt=prompt).prompt_text_or_ids()
    assert err.value.param == "prompt"


def test_chat_content_parts_and_developer_role_render_as_text():
    body = ChatBody(messages=[{"role": "developer", "content": "be brief"},
                              {"role": "user", "content": [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]}])
    assert body.conversation() == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    with pytest.raises(ApiError):
        ChatBody(messages=[{"role": "user", "content": [{"type": "image_url"}]}]).conversation()
