"""The student inherits the teacher's float32 weights, whatever precision the teacher then runs in."""
from __future__ import annotations

import torch
from helpers import save_tiny_teacher, write_shard_dir

from distill import preflight
from distill.config import DistillConfig


def test_a_float16_teacher_gives_the_student_the_float32_slices(tiny_tokenizer_dir, tmp_path):
    from transformers import AutoModel

    teacher_dir = save_tiny_teacher(tmp_path / "teacher", tiny_tokenizer_dir)
    with torch.no_grad():  # weights that float16 cannot hold exactly
        model = AutoModel.from_pretrained(teacher_dir)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3 + 1e-4)
        model.save_pretrained(teacher_dir)
    shards = write_shard_dir(tmp_path / "shards", [[5, 6, 7]] * 8)
    cfg = DistillConfig(teacher=str(teacher_dir), data=str(shards), output_dir=str(tmp_path / "run"),
                        teacher_dtype="float16", student_layer=2, student_hidden_size=16, student_attention_heads=2,
                        num_relation_heads=4, max_seq_len=32)
    frozen, student = preflight.build_models(cfg, torch.device("cpu"))
    assert frozen.dtype == torch.float16 and next(frozen.model.parameters()).dtype == torch.float16
    reference = AutoModel.from_pretrained(teacher_dir, dtype=torch.float32)
    word = reference.embeddings.word_embeddings.weight[:, :16]
    assert torch.equal(student.embeddings.word_embeddings.weight, word)  # not word.half().float()
    assert not torch.equal(word.half().float(), word)  # the check above can tell the two apart
    from distill.student import create_student

    want = create_student(reference, 2, 16, 2).state_dict()  # the same student, created from a float32 teacher
    assert all(torch.equal(v, want[k]) for k, v in student.state_dict().items())
