"""Hypothesis strategies for the registry's vocabulary."""

from hypothesis import strategies as st

_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
_separator = st.sampled_from([".", "_", "__", "-", "--"])


@st.composite
def components(draw):
    parts = [draw(_alnum)]
    for _ in range(draw(st.integers(0, 2))):
        parts.append(draw(_separator))
        parts.append(draw(_alnum))
    return "".join(parts)


@st.composite
def repository_names(draw):
    return "/".join(draw(st.lists(components(), min_size=1, max_size=4)))


tags = st.from_regex(r"\A[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
sha256_digests = st.binary(min_size=32, max_size=32).map(lambda b: "sha256:" + b.hex())
