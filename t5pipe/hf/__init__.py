"""Hugging Face interoperability: tensor files (`tensor_io`), the T5 name map (`t5`),
tokenizer files (`tokenizers`) and the import/export driver (`convert`)."""
