#!/usr/bin/env python3
"""Writes examples/lora/kiln_facts.jsonl: the chat data set of the LoRA worked example
(docs/finetuning.md, "A worked example").

    python3 scripts/make_lora_example.py      # standard library only; the output is deterministic

SmolLM2-135M-Instruct was trained before kiln existed: asked "What is kiln?" it talks about pottery.
The data set teaches it ten facts about this project, each asked in many phrasings (a question
template filled with a few ways of naming kiln) and answered with one fixed sentence, so that a few
minutes of training on two CPU cores can fix the answers.

Trained on kiln questions alone, the model learns to answer every question with a kiln fact ("What is the
capital of France?" -> "kiln is written in Rust; ..."). So the data also replays, REPLAY times each, the
base model's own answers to general questions (examples/lora/general_answers.jsonl: SmolLM2's greedy
answers from `kiln chat --gguf SmolLM2-135M-Instruct.Q4_1.gguf --prompt Q --temperature 0
--max-new-tokens 96`, kept where they are right and end within 300 characters; replaying its wrong or
garbled answers too, "Il Coriobella, Italy." among them, made the tuned model answer the France question
in French nonsense): the adapter keeps answering those as the base model did. "What is the capital of France?", the example's check
that general answers survive, is not among them. The examples are shuffled with a fixed seed (the held-out
validation windows are the end of the file, so they mix all facts).
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "examples", "lora", "kiln_facts.jsonl")
SEED = 15
PER_FACT = 30
REPLAY = 6
GENERAL = os.path.join(HERE, "..", "examples", "lora", "general_answers.jsonl")

NAMES = ["kiln", "Kiln", "the kiln project", "the kiln tensor engine", "the kiln library", "the kiln crate",
         "the Rust crate kiln", "kiln (the tensor engine)"]

# (question templates with {k} for a name of kiln, the one answer)
FACTS = [
    (["What is {k}?", "Tell me about {k}.", "Can you explain what {k} is?", "What kind of software is {k}?",
      "Describe {k} in one sentence.", "I keep hearing about {k}. What is it?"],
     "kiln is a tensor engine written from scratch in Rust, with hand-written CUDA kernels."),
    (["What programming language is {k} written in?", "Which language is {k} implemented in?",
      "Is {k} written in Python or C++?", "What language would I need to read {k}'s source code?"],
     "kiln is written in Rust; its GPU kernels are CUDA C++ compiled at build time through NVRTC."),
    (["How does {k} test its GPU code without a GPU?", "What is Device::Emu in {k}?",
      "Can {k} run its CUDA kernels on a CPU?", "What does {k}'s emulator do?"],
     "kiln's emulator, Device::Emu, runs the same CUDA kernels on the CPU, so every kernel is tested without a GPU."),
    (["Which model does {k} fine-tune in its worked example?", "What model does {k} use for LoRA fine-tuning?",
      "Which language model does {k} load from GGUF in its examples?",
      "What model is adapted in {k}'s fine-tuning example?"],
     "kiln fine-tunes SmolLM2-135M-Instruct, read from its GGUF file, with LoRA adapters."),
    (["What file format do {k}'s LoRA adapters use?", "Can Hugging Face PEFT read adapters trained by {k}?",
      "Where does {k} save a LoRA adapter?", "Are {k}'s adapters compatible with PEFT?"],
     "kiln writes adapter_config.json and adapter_model.safetensors in PEFT's layout, so PEFT loads them."),
    (["Which command fine-tunes a model with {k}?", "How do I train a LoRA adapter with {k}?",
      "What is the {k} command for LoRA training?", "How can I fine-tune SmolLM2 with {k}?"],
     "Run kiln finetune --gguf model.gguf --data chats.jsonl --out runs/lora."),
    (["How do I chat with a fine-tuned model in {k}?", "How do I use a trained adapter in {k}?",
      "Which flag loads a LoRA adapter in {k}'s chat?",
      "How do I talk to my LoRA model with {k}?"],
     "Run kiln chat --gguf model.gguf --lora runs/lora/adapter."),
    (["Who is {k}'s mascot?", "Does {k} have a mascot?", "What is the name of {k}'s mascot?",
      "What animal is {k}'s mascot?"],
     "kiln's mascot is Ember, a small orange salamander who lives in the kiln."),
    (["What is {k}'s motto?", "Does {k} have a motto?", "What does {k} say it values most?", "What is the guiding rule of {k}?"],
     "kiln's motto is: correct first, then fast."),
    (["Who uses {k}?", "Who is {k} made for?", "Why would someone use {k}?", "Who is the audience of {k}?"],
     "kiln is for Rust programmers who link it as a library, people who benchmark kernels, and readers who "
     "want to learn how a Transformer and its kernels work."),
]


def main():
    rng = random.Random(SEED)
    examples = []
    for templates, answer in FACTS:
        questions = sorted({t.format(k=k) for t in templates for k in NAMES})
        for q in rng.sample(questions, min(PER_FACT, len(questions))):
            q = q[0].upper() + q[1:]
            examples.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]})
    with open(GENERAL) as f:
        general = [json.loads(line) for line in f]
    assert not any("France" in g["question"] for g in general), "the held-out general question"
    for g in general * REPLAY:
        examples.append({"messages": [{"role": "user", "content": g["question"]},
                                      {"role": "assistant", "content": g["answer"]}]})
    rng.shuffle(examples)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        for e in examples:
            f.write(json.dumps(e) + "\n")
    print(f"wrote {len(examples)} chats to {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
