"""Token sequences: an LSTM decoder p(x|z) = prod_t p(x_t | x_<t, z) over ids in [0, V), and the
LSTM encoder of q(z|x).

The decoder as Bowman et al. 2016 and He et al. 2019 (jxhe/vae-lagging-encoder
``modules/decoders/dec_lstm.py``) condition it: the cell state starts at c0 = W z (no bias) and
the hidden state at h0 = tanh(c0) (every layer's, for more than one), z is concatenated to every
input embedding, and the logits are a linear map of the top hidden state (no bias, as theirs).
The first input is a start symbol (id V), so every one of the L tokens is predicted; the
sequences have a fixed length, so there is no end symbol. Dropout (their ``dec_dropout_in`` and
``dec_dropout_out``, 0.5 on the synthetic set) acts on the input embeddings and on the hidden
states before the logits; word dropout (Bowman et al. 2016, section 3.2) replaces each input
token but the start symbol by an unknown symbol (id V + 1) with probability ``word_dropout``.
Both act in training mode only and draw from torch's global generator, so such runs do not
stack. With ``z_output`` (Skip-VAE's text model, Dieng et al. 2019: z into every step's output)
the logits also get W2 z.

log p(x|z) is computed in one pass over the sequence (teacher forcing), exact;
``tests/test_sequences.py`` checks it against a token-by-token loop in float64 and that token t's
logits never depend on tokens >= t. The encoder: embeddings, an LSTM over the sequence, and a
linear map of its last hidden state to q's parameters (He et al.'s ``enc_lstm.py``).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import load_pretrained

#: rows of (sample x point) sequences per chunk of the no-grad log-likelihood: (rows, L, V)
#: logits at a time, so that IS with K = 500 does not hold K x B x L x V floats at once
EVAL_ROWS = 2048


class LSTMDecoder(nn.Module):
    stacking = "the LSTM decoder's stacked kernels are not checked against alone"

    def __init__(self, z_dim: int, vocab: int, length: int, embed: int = 50, hidden: int = 50,
                 layers: int = 1, dropout: float = 0.0, word_dropout: float = 0.0,
                 z_output: bool = False):
        super().__init__()
        self.z_dim, self.vocab, self.length, self.layers = z_dim, vocab, length, layers
        self.word_dropout = word_dropout
        self.embed = nn.Embedding(vocab + 2, embed)  # + start and unknown symbols
        self.lstm = nn.LSTM(embed + z_dim, hidden, layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
            self.init = nn.Linear(z_dim, hidden * layers, bias=False)
            self.z_out = nn.Linear(z_dim, vocab, bias=False) if z_output and z_dim else None
        self.out = nn.Linear(hidden, vocab, bias=False)
        self.drop_in, self.drop_out = nn.Dropout(dropout), nn.Dropout(dropout)

    def _inputs(self, x: Tensor) -> Tensor:
        """The input ids: the start symbol, then x without its last token (word dropout in
        training)."""
        prev = x[:, :-1]
        if self.training and self.word_dropout > 0:
            drop = torch.rand(prev.shape, device=x.device) < self.word_dropout
            prev = torch.where(drop, torch.full_like(prev, self.vocab + 1), prev)
        start = torch.full_like(x[:, :1], self.vocab)
        return torch.cat([start, prev], 1)

    def logits(self, inputs: Tensor, z: Tensor, state=None):
        """Logits (N, T, V) for input ids (N, T) and z (N, Z), from ``state`` (None: the state z
        gives), and the state after the last input."""
        n, t = inputs.shape
        emb = self.drop_in(self.embed(inputs))
        emb = torch.cat([emb, z[:, None, :].expand(n, t, self.z_dim)], -1)
        if state is None:
            c0 = self.init(z).view(n, self.layers, -1).transpose(0, 1).contiguous()
            state = (torch.tanh(c0), c0)
        h, state = self.lstm(emb, state)
        out = self.out(self.drop_out(h))
        if self.z_out is not None:
            out = out + self.z_out(z)[:, None, :]
        return out, state

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) for ids x (B, L) and z (S, B, Z) -> (S, B), in one pass per chunk."""
        s, b = z.shape[:2]
        x = x.long()
        inputs = self._inputs(x)
        rows = s * b if torch.is_grad_enabled() else EVAL_ROWS
        flat_z = z.reshape(s * b, self.z_dim)
        out = []
        for lo in range(0, s * b, rows):
            idx = torch.arange(lo, min(lo + rows, s * b), device=x.device) % b
            logits, _ = self.logits(inputs[idx], flat_z[lo:lo + rows])
            logp = F.log_softmax(logits, -1).gather(-1, x[idx, :, None])[..., 0]
            out.append(logp.sum(-1))
        return torch.cat(out).view(s, b)

    def inference(self):
        return self

    @torch.no_grad()
    def sample(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples (N, L) for z (N, Z)."""
        n = len(z)
        token = torch.full((n, 1), self.vocab, dtype=torch.long, device=z.device)
        state, out = None, []
        for _ in range(self.length):
            logits, state = self.logits(token, z, state)
            token = torch.multinomial(F.softmax(logits[:, -1].double(), -1), 1,
                                      generator=generator)
            out.append(token)
        return torch.cat(out, 1)

    def load_pretrained(self, state: dict[str, Tensor]) -> None:
        """Start from the same decoder trained without a latent (``layers.load_pretrained``):
        what carries z (the z columns of the first layer's input weights, the state and output
        maps of z) at zero, so the model starts as exactly the pretrained language model."""
        load_pretrained(self, state, z_columns=("lstm.weight_ih_l0",))


class LSTMEncoder(nn.Module):
    """q(z|x)'s parameters from ids x (B, L): embeddings, an LSTM, a linear map of its last
    hidden state."""

    def __init__(self, vocab: int, n_out: int, embed: int = 50, hidden: int = 50,
                 layers: int = 1):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: Tensor) -> Tensor:
        _, (h, _) = self.lstm(self.embed(x.long()))
        return self.head(h[-1])
