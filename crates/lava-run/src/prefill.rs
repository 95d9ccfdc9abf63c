//! A sequence (its cache and the tokens it holds) and its prefill in chunks.

use std::marker::PhantomData;

use burn::tensor::{backend::Backend, Tensor};
use lava_cache::KvCache;
use lava_llama::{Llama, Logits};

use crate::error::RunError;

/// One sequence: the cache its tokens went into and those tokens, in order.
///
/// `C` is the cache's type: any [`KvCache`] (the default, boxed), or a
/// concrete one kept as itself (a [`lava_cache::CompressedCache`], to read its
/// kept positions after). A sequence can start from a cache that already
/// holds tokens ([`Sequence::resume`]).
pub struct Sequence<B: Backend, C: KvCache<B> + ?Sized = dyn KvCache<B>> {
    /// The cache.
    pub cache: Box<C>,
    /// Every token fed to the cache so far (prompt and generated).
    pub tokens: Vec<u32>,
    backend: PhantomData<fn() -> B>,
}

impl<B: Backend, C: KvCache<B> + ?Sized> Sequence<B, C> {
    /// A sequence over an empty cache.
    pub fn new(cache: Box<C>) -> Self {
        Self::resume(cache, Vec::new())
    }

    /// A sequence over a cache that already holds `tokens`.
    pub fn resume(cache: Box<C>, tokens: Vec<u32>) -> Self {
        Self { cache, tokens, backend: PhantomData }
    }

    /// The position the next token takes.
    pub fn position(&self) -> usize {
        self.cache.next_position()
    }

    /// Runs `tokens` through `model` into the cache, `chunk` tokens per
    /// forward pass (at least 1), calling `on_chunk(n)` after each with the
    /// chunk's length. Returns the logits after the last token (`[1, vocab]`),
    /// `None` for no tokens.
    pub fn prefill(&mut self, model: &Llama<B>, tokens: &[u32], chunk: usize, mut on_chunk: impl FnMut(usize)) -> Result<Option<Tensor<B, 2>>, RunError> {
        let mut logits = None;
        for piece in tokens.chunks(chunk.max(1)) {
            logits = Some(model.forward(piece, self.cache.as_mut(), Logits::Last)?);
            self.tokens.extend_from_slice(piece);
            on_chunk(piece.len());
        }
        Ok(logits)
    }

    /// Runs one token through `model` into the cache; returns its logits `[1, vocab]`.
    pub fn step(&mut self, model: &Llama<B>, token: u32) -> Result<Tensor<B, 2>, RunError> {
        let logits = model.forward(&[token], self.cache.as_mut(), Logits::Last)?;
        self.tokens.push(token);
        Ok(logits)
    }
}
