"""Model-side data foundation for fine-tuning: chat templates, a small BPE tokenizer, packing, a tiny Llama and
the token-weighted loss. Pure torch/transformers: nothing here knows about Ray or DeepSpeed."""
