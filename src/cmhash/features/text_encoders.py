"""Text encoders: CLIP text towers (open_clip) and the shallow literature's pipelines (scikit-learn).

* ``clip:MODEL`` -- ``model.encode_text`` (not L2-normalised) of the open_clip model, captions
  tokenised by the model's own tokenizer (truncated to its context length).
* ``bow`` / ``binary-bow`` -- term counts (or presence) over the ``vocabulary_size`` most frequent
  words after English stop words: the tag / word vectors of MIRFlickr (1,386-d), NUS-WIDE (1,000-d)
  and IAPR-TC12 (2,912-d) as the field ships them.
* ``tfidf`` -- the same vocabulary weighted by TF-IDF (scikit-learn's smooth idf, L2 rows).
* ``lda`` -- topic proportions of an LDA model with ``topics`` topics fit on the term counts
  (WIKI's text features are 10-topic LDA proportions).

The scikit-learn pipelines are fit on the captions given (every row of the file), as the field's
released features were fit on their whole collections; the vocabulary is stored with the features.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from cmhash.progress import Progress, ensure_progress

CLASSIC = ("bow", "binary-bow", "tfidf", "lda")


@dataclass
class TextEncoder:
    name: str
    settings: dict[str, Any]
    clip: Any = None  # the loaded open_clip model (clip:MODEL)
    vocabulary: np.ndarray | None = field(default=None, init=False)

    def encode(self, captions: Sequence[str], *, batch_size: int = 256,
               progress: Progress | None = None) -> np.ndarray:
        """Features of ``captions`` (rows in order) as float32."""
        if self.clip is not None:
            return self._encode_clip(captions, batch_size, ensure_progress(progress))
        return self._encode_classic(captions)

    def provenance(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoder": self.name, **self.settings}
        if self.clip is not None:
            out.update(self.clip.weights.provenance())
        return out

    def _encode_clip(self, captions: Sequence[str], batch_size: int, progress: Progress) -> np.ndarray:
        import torch

        progress.start(len(captions), "texts")
        out = []
        with torch.inference_mode():
            for start in range(0, len(captions), batch_size):
                chunk = list(captions[start:start + batch_size])
                tokens = self.clip.tokenizer(chunk).to(self.clip.device)
                out.append(self.clip.model.encode_text(tokens).float().cpu().numpy())
                progress.advance(len(chunk))
        return np.concatenate(out).astype(np.float32)

    def _encode_classic(self, captions: Sequence[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer

        size = self.settings["vocabulary_size"]
        common = {"max_features": size, "stop_words": "english", "lowercase": True}
        if self.name == "tfidf":
            vectorizer: Any = TfidfVectorizer(**common)
        else:
            vectorizer = CountVectorizer(binary=self.name == "binary-bow", **common)
        try:
            counts = vectorizer.fit_transform(list(captions))
        except ValueError as exc:  # "empty vocabulary; perhaps the documents only contain stop words"
            raise ValueError(f"text encoder {self.name}: cannot build a vocabulary from the captions: {exc}") from exc
        self.vocabulary = np.asarray(vectorizer.get_feature_names_out(), dtype=str)
        if self.name != "lda":
            return counts.toarray().astype(np.float32)
        from sklearn.decomposition import LatentDirichletAllocation

        lda = LatentDirichletAllocation(n_components=self.settings["topics"], random_state=self.settings["seed"])
        return lda.fit_transform(counts).astype(np.float32)


def build_text_encoder(spec: str, weights: str | None = None, *, vocabulary_size: int = 1000, topics: int = 10,
                       seed: int = 0, device: str = "cpu", model_config: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None) -> TextEncoder:
    """A text encoder from ``clip:MODEL``, ``bow``, ``binary-bow``, ``tfidf`` or ``lda``."""
    kind, _, name = spec.partition(":")
    if kind == "clip" and name:
        from cmhash.features.clip import load_clip
        from cmhash.features.weights import check_weights_argument

        clip = load_clip(name, check_weights_argument(weights, spec), seed=seed, device=device,
                         model_config=model_config, cache_dir=cache_dir)
        return TextEncoder(name=spec, clip=clip, settings={
            "tokenizer": type(clip.tokenizer).__name__,
            "context_length": getattr(clip.tokenizer, "context_length", None),
            "output": "encode_text, not normalised"})
    if spec in CLASSIC:
        if weights is not None:
            raise ValueError(f"text encoder {spec} is fit on the captions and takes no weights (got {weights!r})")
        if int(vocabulary_size) < 1:
            raise ValueError(f"vocabulary_size must be >= 1, got {vocabulary_size}")
        settings: dict[str, Any] = {"vocabulary_size": int(vocabulary_size), "stop_words": "english (scikit-learn)",
                                    "lowercase": True, "fit_on": "the captions of this file"}
        if spec == "lda":
            if int(topics) < 1:
                raise ValueError(f"topics must be >= 1, got {topics}")
            settings.update(topics=int(topics), seed=int(seed), lda="scikit-learn LatentDirichletAllocation, "
                            "default priors (1/topics), batch variational Bayes, 10 iterations")
        return TextEncoder(name=spec, settings=settings)
    raise ValueError(f"unknown text encoder '{spec}'; expected clip:MODEL, {', '.join(CLASSIC)}")
