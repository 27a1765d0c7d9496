"""The floor: the same GRPO step as raw model calls with no framework around them, done the naive way.

Per step: the processor on the step's 2 prompts, `generate` with `num_return_sequences=G` (so the prompt
and image are expanded G times before prefill), the reward on the decoded texts, group-normalised
advantages, ONE forward of all completions with their repeated prompts and images, the token-mean
clipped-surrogate loss (ratio 1 on-policy), backward, gradient clipping, AdamW. This is the raw model
work the frameworks cannot avoid without changing the algorithm (e.g. a shared prompt prefix).
"""

from __future__ import annotations

import torch
from probe import Probe
from workload import Case, Settings, build_parts, digit_share, load_prompts


def vision_suppressed_ids(tokenizer) -> list[int]:
    """The vision placeholder ids a sampled token must not be (the same list perception-rl suppresses)."""
    from perception_rl.policy import VISION_SPECIAL_TOKENS

    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in VISION_SPECIAL_TOKENS if t in vocab]


def expand_to_completions(inputs: dict, group: int) -> dict:
    """Prompt tensors repeated once per completion (each prompt holds one image of equal size)."""
    patches = inputs["pixel_values"].view(len(inputs["input_ids"]), -1, inputs["pixel_values"].shape[-1])
    return {
        "input_ids": inputs["input_ids"].repeat_interleave(group, 0),
        "attention_mask": inputs["attention_mask"].repeat_interleave(group, 0),
        "mm_token_type_ids": inputs["mm_token_type_ids"].repeat_interleave(group, 0),
        "pixel_values": patches.repeat_interleave(group, 0).flatten(0, 1),
        "image_grid_thw": inputs["image_grid_thw"].repeat_interleave(group, 0),
    }


def group_advantages(rewards: torch.Tensor, group: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4), 0 for a uniform group."""
    r = rewards.view(-1, group)
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-4)).flatten()


def step(model, processor, optimizer, batch, settings: Settings, reward, suppressed: list[int]) -> None:
    """One naive GRPO step on `batch` (a list of `workload.Prompt`)."""
    tokenizer = processor.tokenizer
    texts = [processor.apply_chat_template(p.messages, add_generation_prompt=True, tokenize=False) for p in batch]
    inputs = processor(text=texts, images=[p.image for p in batch], padding=True, return_tensors="pt")
    prompt_length = inputs["input_ids"].shape[1]
    model.eval()
    with torch.no_grad():
        sequences = model.generate(
            **inputs, do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0,
            max_new_tokens=settings.new_tokens, min_new_tokens=settings.new_tokens,
            num_return_sequences=settings.group_size, suppress_tokens=suppressed, repetition_penalty=1.0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    model.train()
    completion_ids = sequences[:, prompt_length:]  # [N, L], all exactly new_tokens long
    rewards = torch.tensor(reward(tokenizer.batch_decode(completion_ids, skip_special_tokens=True)))
    advantages = group_advantages(rewards, settings.group_size)  # [N]

    full = expand_to_completions(inputs, settings.group_size)
    full["input_ids"] = sequences
    full["attention_mask"] = torch.cat([full["attention_mask"], torch.ones_like(completion_ids)], 1)
    full["mm_token_type_ids"] = torch.cat([full["mm_token_type_ids"], torch.zeros_like(completion_ids)], 1)
    length = completion_ids.shape[1]
    logits = model(**full, use_cache=False, logits_to_keep=length + 1).logits[:, :-1] / settings.temperature
    logp = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)  # [N, L]
    ratio = torch.exp(logp - logp.detach())
    eps = settings.clip_epsilon
    per_token = torch.maximum(-advantages[:, None] * ratio, -advantages[:, None] * ratio.clamp(1 - eps, 1 + eps))
    loss = per_token.mean()  # token mean: every completion has the same length
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()


def run(case: Case, settings: Settings, data_dir) -> dict:
    """`settings.steps` naive steps; returns the probe's measurements."""
    tokenizer, processor, model = build_parts(case, settings.seed)
    prompts = load_prompts(data_dir, settings.prompts_needed, case.image_side)
    probe = Probe(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    probe.watch_optimizer(optimizer)
    reward = probe.timed(digit_share)
    suppressed = vision_suppressed_ids(tokenizer)
    torch.manual_seed(settings.seed)
    probe.begin_run()
    per_step = settings.prompts_per_step
    for index in range(settings.steps):
        probe.begin_step()
        batch = prompts[index * per_step : (index + 1) * per_step]
        step(model, processor, optimizer, batch, settings, reward, suppressed)
        probe.end_step()
    return probe.summary()
