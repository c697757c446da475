"""The data: the embedded corpora (the standard library's code and prose), the byte-level BPE
tokenizer, token streams and batches."""
