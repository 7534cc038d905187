import jax.numpy as jnp
import numpy as np

from gemma_mt import models
from gemma_mt.data.records import PromptFormat
from gemma_mt.translate import Translator, gemma_text_tokenizer


def test_gemma_sampler_tokenizer_has_the_same_ids(demo_tokenizer):
  tokenizer = gemma_text_tokenizer(demo_tokenizer)
  assert tokenizer.special_tokens.EOS == demo_tokenizer.eos_id
  assert tokenizer.special_tokens.BOS == demo_tokenizer.bos_id
  assert tokenizer.special_tokens.END_OF_TURN == demo_tokenizer.piece_id('<end_of_turn>')
  assert tokenizer.encode('Le chat.') == demo_tokenizer.encode('Le chat.').tolist()


def test_translations_stop_at_eos(demo_tokenizer):
  spec = models.get_model_spec('tiny')
  model = spec.transformer(jnp.float32)
  params = models.init_params(model, 0, 8)
  # Make EOS the most likely next token everywhere: decoding must stop at once.
  embedding = params['embedder']['input_embedding']
  params['embedder']['input_embedding'] = embedding.at[demo_tokenizer.eos_id].set(
      embedding.mean(0) * 0 + 50.0)
  translator = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=8)
  assert translator(['The cat.', 'I see two dogs.']) == ['', '']
  # A model pushed to one word instead never stops: exactly the budget of 8 tokens, decoded.
  word = demo_tokenizer.piece_id('▁chat')
  params = models.init_params(model, 0, 8)
  params['embedder']['input_embedding'] = embedding.at[word].set(embedding.mean(0) * 0 + 50.0)
  chatty = Translator(model, params, demo_tokenizer, PromptFormat(), max_new_tokens=8)
  out = chatty(['The cat.', 'I see two dogs.'])
  assert out == [' '.join(['chat'] * 8)] * 2, out
