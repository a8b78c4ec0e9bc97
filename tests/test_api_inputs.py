"""MiniLMTrainer refuses what it cannot train on with a TypeError naming the fix, before anything runs."""
from __future__ import annotations

import pytest
from helpers import save_tiny_teacher

from distill import MiniLMTrainer, MiniLMTrainingArguments


@pytest.fixture(scope="module")
def parts(tmp_path_factory, tiny_tokenizer_dir):
    from transformers import AutoModel

    directory = save_tiny_teacher(tmp_path_factory.mktemp("api_teacher"), tiny_tokenizer_dir)
    args = MiniLMTrainingArguments(output_dir=str(tmp_path_factory.mktemp("api_out")), teacher_layer=3,
                                   student_layer=2, student_hidden_size=16, num_relation_heads=4, max_steps=2,
                                   report_to=[])
    return args, AutoModel.from_pretrained(directory)


def make(parts, **overrides):
    args, teacher = parts
    kwargs = {"args": args, "teacher_model": teacher, "model": None,
              "train_dataset": [{"input_ids": [2, 5, 3], "attention_mask": [1, 1, 1]}] * 4}
    kwargs.update(overrides)
    return MiniLMTrainer(**kwargs)


@pytest.mark.parametrize("overrides, message", [
    ({"teacher_model": None}, "teacher_model must be a model, e.g. AutoModel.from_pretrained"),
    ({"teacher_model": "google-bert/bert-base-uncased"}, "teacher_model must be a model"),
    ({"model": "student"}, "model must be the student model"),
    ({"train_dataset": "corpus.txt"}, "train_dataset is a str ('corpus.txt'), not a dataset: tokenize the texts"),
    ({"train_dataset": [{"text": "hello"}] * 3}, "rows hold ['text'], not input_ids: tokenize them first"),
    ({"train_dataset": ["hello", "world"]}, "rows hold str, not input_ids"),
    ({"train_dataset": 42}, "train_dataset must be a dataset of tokenized rows, not int"),
    ({"train_dataset": [{"input_ids": [2, 5, 3]}, {"input_ids": [2, 3]}]},
     "rows differ in length (2 and 3 tokens) and nothing pads them: pass data_collator=DataCollatorWithPadding"),
])
def test_bad_trainer_inputs_are_type_errors_naming_the_fix(parts, overrides, message):
    with pytest.raises(TypeError) as err:
        make(parts, **overrides)
    assert message in str(err.value)


def test_a_tokenizer_without_a_collator_pads_as_transformers_trainer_does(parts, tiny_tokenizer_dir):
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tok = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    trainer = make(parts, train_dataset=[{"input_ids": [2, 5, 3]}, {"input_ids": [2, 3]}], processing_class=tok)
    assert isinstance(trainer.data_collator, DataCollatorWithPadding)
    batch = trainer.data_collator([{"input_ids": [2, 5, 3]}, {"input_ids": [2, 3]}])
    assert batch["input_ids"].tolist() == [[2, 5, 3], [2, 3, 0]]
