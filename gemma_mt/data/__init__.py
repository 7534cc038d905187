"""Everything before the device: sources of pairs, the tokenizer, records and the Grain pipeline."""
