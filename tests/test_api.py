"""bertdistiller's README quick start, with local paths and a few steps, on distill's DeepSpeed loop."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from helpers import REPO, WORDS, cpu_env

pytestmark = pytest.mark.slow

QUICK_START = """
import random, sys
import torch
from datasets import Dataset
from transformers import AutoModel, AutoTokenizer, DataCollatorWithPadding
from distill import MiniLMTrainer, MiniLMTrainingArguments, create_student

teacher_dir, out, words = sys.argv[1], sys.argv[2], sys.argv[3].split()
tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
rng = random.Random(0)
texts = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 30))) for _ in range(96)]
train_dataset = Dataset.from_dict({"text": texts}).map(
    lambda b: tokenizer(b["text"], truncation=True, max_length=32), batched=True, remove_columns=["text"])
eval_dataset = train_dataset.select(range(8))
data_collator = DataCollatorWithPadding(tokenizer)

# 1. Create configuration (bertdistiller's names)
args = MiniLMTrainingArguments(
    teacher_layer=3,
    student_layer=2,
    student_hidden_size=16,
    student_attention_heads=2,
    num_relation_heads=4,
    relations={(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0},
    output_dir=out,
    per_device_train_batch_size=8,
    learning_rate=2e-3,
    max_steps=12,
    logging_steps=4,
    save_steps=6,
    max_seq_len=32,
    dataloader_num_workers=0,
    report_to="none",
    seed=3,
)

# 2. Create models & trainer
teacher = AutoModel.from_pretrained(teacher_dir)
student = create_student(teacher_dir, args, use_teacher_weights=True)
before = {k: v.clone() for k, v in student.state_dict().items()}
trainer = MiniLMTrainer(args=args, teacher_model=teacher, model=student, train_dataset=train_dataset,
                        eval_dataset=eval_dataset, data_collator=data_collator)

# 3. Train and save
trainer.train()
student.save_pretrained(out + "/distilled-model")
changed = sum(not torch.equal(before[k], v) for k, v in student.state_dict().items())
print("CHANGED", changed, len(before))
"""


def test_bertdistiller_quick_start_runs_on_the_deepspeed_loop(tmp_path, tiny_tokenizer_dir):
    import torch
    from helpers import save_tiny_teacher
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(save_tiny_teacher(tmp_path / "teacher", tiny_tokenizer_dir))
    out = tmp_path / "output"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(QUICK_START), str(tmp_path / "teacher"), str(out),
                           " ".join(WORDS)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=cpu_env(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    changed, total = map(int, proc.stdout.split("CHANGED")[1].split())
    assert changed > total // 2  # the caller's student object was trained in place

    # checkpoints every save_steps, the final export, and the saved model agree
    done = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "COMPLETE").is_file())
    assert done == ["step-00000006", "step-00000012"]
    saved = AutoModel.from_pretrained(out / "distilled-model").state_dict()
    exported = AutoModel.from_pretrained(out / "student").state_dict()
    assert saved.keys() == exported.keys()
    for k in saved:
        torch.testing.assert_close(saved[k], exported[k], rtol=0, atol=0)
    assert AutoModel.from_pretrained(out / "student").config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(out / "student").vocab_size == tok.vocab_size
    run = json.loads((out / "run_config.json").read_text())
    assert run["relations"] == "qq:1.0,kk:1.0,vv:1.0" and run["max_steps"] == 12 and run["teacher_layer"] == 3


def test_relations_as_text_like_the_command_line(tmp_path):
    from distill.api import MiniLMTrainingArguments

    args = MiniLMTrainingArguments(output_dir=str(tmp_path), relations="qq:1,vv:0.5", max_steps=3, teacher_layer=3,
                                   student_hidden_size=32, num_relation_heads=4, report_to=[])
    assert args.relations == {(1, 1): 1.0, (3, 3): 0.5}
    assert args.to_distill_config("teacher").relations == "qq:1.0,vv:0.5"
    with pytest.raises(ValueError, match="relation item 'qz:1'"):
        MiniLMTrainingArguments(output_dir=str(tmp_path), relations="qz:1", report_to=[])


def test_create_student_names_a_missing_teacher_directory(tmp_path):
    from distill.api import MiniLMTrainingArguments, create_student

    args = MiniLMTrainingArguments(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ValueError, match=f"teacher {tmp_path}/none: no such directory"):
        create_student(str(tmp_path / "none"), args)


def test_overwrite_output_dir_reaches_the_run(tmp_path):
    """A second train() into the same output_dir is refused unless asked, as on the command line."""
    from distill.api import MiniLMTrainingArguments

    kwargs = dict(output_dir=str(tmp_path), max_steps=3, teacher_layer=3, student_hidden_size=32,
                  num_relation_heads=4, report_to=[])
    assert MiniLMTrainingArguments(**kwargs).to_distill_config("teacher").overwrite_output_dir is False
    args = MiniLMTrainingArguments(**kwargs, overwrite_output_dir=True)
    assert args.to_distill_config("teacher").overwrite_output_dir is True
