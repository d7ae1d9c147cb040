"""The action-token vocabulary: one special token per action bin, "<act_0>".."<act_{N-1}>", plus
the prompt markers of the runtime's layout (OpenVLA's scheme, with tokens of their own)."""
from __future__ import annotations

ACTION_TOKEN_FORMAT = "<act_{}>"
MARKER_TOKENS = ("<obs>", "<state>", "<act>", "</act>")


def action_token_names(n_bins: int = 256) -> list[str]:
    """"<act_0>".."<act_{n_bins-1}>": the special token of each action bin."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return [ACTION_TOKEN_FORMAT.format(i) for i in range(n_bins)]


def action_token_ids(tokenizer, n_bins: int = 256) -> list[int]:
    """The ids of "<act_0>".."<act_{n_bins-1}>" in ``tokenizer``, bin order.

    Raises ValueError if any is missing or is not exactly one token (then bins could not be
    decoded one id at a time): use ``ensure_action_tokens`` to add them to a model.
    """
    names = action_token_names(n_bins)
    vocab = tokenizer.get_vocab()
    missing = [n for n in names if n not in vocab]
    if missing:
        raise ValueError(
            f"the tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) lacks {len(missing)} of the "
            f"{n_bins} action tokens (first missing: {missing[0]!r}). Models built by aura_ros have them; for "
            "another model call aura_ros.backends.transformers.vocab.ensure_action_tokens(model, tokenizer, n_bins) "
            "and "
            "save the result (the new embedding rows are untrained until the policy is fine-tuned).")
    ids = [vocab[n] for n in names]
    # One encode of all names: each must come out as its own single id (not split into bytes).
    encoded = tokenizer("".join(names), add_special_tokens=False)["input_ids"]
    if list(encoded) != ids:
        raise ValueError("the action tokens are in the vocabulary but do not encode to one id each; they must be "
                         "added as special tokens (ensure_action_tokens does that)")
    if len(set(ids)) != n_bins:
        raise ValueError("two action bins share one token id")
    return ids


def ensure_action_tokens(model, tokenizer, n_bins: int = 256) -> list[int]:
    """Add the action tokens and markers to ``tokenizer`` (special, one id each) and grow ``model``'s
    embeddings to match. Returns the action ids. A no-op for a model that has them already.

    The new rows start at the mean of the existing embeddings (transformers' mean resizing): the
    model then emits them no more often than an average token until it is fine-tuned.
    """
    vocab = tokenizer.get_vocab()
    new = [t for t in list(MARKER_TOKENS) + action_token_names(n_bins) if t not in vocab]
    if new:
        tokenizer.add_special_tokens({"extra_special_tokens": new}, replace_extra_special_tokens=False)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return action_token_ids(tokenizer, n_bins)
