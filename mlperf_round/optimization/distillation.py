"""Knowledge distillation of a pruned model from the original, with Model Optimizer's distillation API.

`mtd.convert` wraps the student with the frozen teacher; the loss is the KL divergence between
their temperature-softened next-token distributions at the lm_head (LogitsDistillationLoss),
per token, averaged. The data is the calibration list (MLPerf draws it from the training split,
disjoint from the accuracy set), packed into fixed-length sequences so no token is padding.
"""

from __future__ import annotations

import torch


def packed_sequences(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """[n, seq_len] token blocks cut from the texts laid end to end."""
    ids: list[int] = []
    for t in texts:
        ids += tokenizer(t, add_special_tokens=False)["input_ids"]
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the distillation texts hold {len(ids)} tokens, fewer than one {seq_len}-token sequence")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


def distill(
    student,
    teacher,
    sequences: torch.Tensor,
    steps: int,
    lr: float,
    temperature: float,
    batch_size: int,
    seed: int,
    desc: str = "distill",
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """`student` trained to match `teacher`, and the loss per step."""
    import modelopt.torch.distill as mtd
    from tqdm import tqdm

    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    kd = mtd.convert(
        student,
        mode=[
            (
                "kd_loss",
                {
                    "teacher_model": teacher,
                    "criterion": {
                        ("lm_head", "lm_head"): mtd.LogitsDistillationLoss(temperature=temperature, reduction="none")
                    },
                    "loss_balancer": None,
                },
            )
        ],
    )
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    curve = []
    kd.train()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    try:
        for step in tqdm(range(steps), desc=desc, unit="step", mininterval=2.0):
            idx = torch.randint(len(sequences), (min(batch_size, len(sequences)),), generator=gen)
            kd(input_ids=sequences[idx])
            loss = kd.compute_kd_loss(loss_reduction_fn=lambda per_token: per_token.mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            curve.append({"step": step, "kd_loss": float(loss.detach())})
    finally:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(threads)
    return mtd.export(kd).eval(), curve
