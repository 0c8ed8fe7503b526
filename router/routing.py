"""The router: prompt -> category (classifier) -> expert (category map), with entropy fallback.

`load_router()` is the one entry point the serving layer needs. It reads the trained artifact,
optionally replacing its category map, fallback expert or tau per cluster (a test cluster maps
categories to tiny experts), and shares one encoder per process between routers.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from cluster.build_lock import build_lock
from cluster.paths import router_dir
from router.artifact import (
    ARTIFACT_VERSION,
    CONFIG_FILE,
    RouterArtifact,
    artifact_exists,
    check_category_map,
    load_artifact,
    load_token_table,
    load_token_weights,
)
from router.classifier import CategoryHead, entropy_nats
from router.conversation import SessionPins, SessionPolicy, routing_text
from router.decision import RouteDecision
from router.embedding import get_encoder
from router.errors import InvalidPromptError
from router.prompt import Prompt

logger = logging.getLogger(__name__)


class Router:
    """Routes prompts to experts. Thread-safe: `route` only reads shared state."""

    def __init__(
        self,
        artifact: RouterArtifact,
        head: CategoryHead,
        encoder,
        *,
        category_map: Mapping[str, str] | None = None,
        fallback_expert: str | None = None,
        entropy_threshold: float | None = None,
        session_policy: SessionPolicy | None = None,
    ):
        if encoder.dim != artifact.head.embedding_dim:
            raise ValueError(
                f"encoder {encoder.path} gives {encoder.dim}-d embeddings but the head expects "
                f"{artifact.head.embedding_dim}; retrain with "
                f"`python -m router.train --encoder {encoder.name}`"
            )
        self._categories = tuple(artifact.categories)
        self._category_map = dict(category_map if category_map is not None else artifact.category_map)
        check_category_map(self._category_map, list(self._categories))
        self._fallback_expert = artifact.fallback_expert if fallback_expert is None else fallback_expert
        if not isinstance(self._fallback_expert, str) or not self._fallback_expert.strip():
            raise ValueError(
                f"fallback_expert must be a non-empty expert name; got {self._fallback_expert!r}"
            )
        tau = artifact.entropy_threshold if entropy_threshold is None else entropy_threshold
        if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau >= 0:
            raise ValueError(f"entropy_threshold must be a number >= 0 (nats); got {tau!r}")
        self._entropy_threshold = float(tau)
        self._temperature = float(artifact.temperature)
        self._head = head.eval()
        self._encoder = encoder
        self.sessions = SessionPins(session_policy)
        self.artifact = artifact

    @property
    def categories(self) -> tuple[str, ...]:
        return self._categories

    @property
    def experts(self) -> frozenset[str]:
        """Every expert `route` can return: the map's experts and the fallback expert."""
        return frozenset(self._category_map.values()) | {self._fallback_expert}

    @property
    def category_map(self) -> dict[str, str]:
        return dict(self._category_map)

    @property
    def fallback_expert(self) -> str:
        return self._fallback_expert

    @property
    def entropy_threshold(self) -> float:
        """tau in nats: a prompt whose category entropy exceeds it goes to the fallback expert."""
        return self._entropy_threshold

    def route(self, prompt: Prompt, *, session: str | None = None) -> RouteDecision:
        """Route one prompt: a string, or OpenAI-style messages (the LAST user turn decides;
        an elliptical follow-up is read with the turn before it). `session` pins the expert."""
        return self.route_batch([prompt], sessions=[session])[0]

    def route_batch(
        self, prompts: Sequence[Prompt], *, sessions: Sequence[str | None] | None = None
    ) -> list[RouteDecision]:
        """Route many prompts in one encoder pass; item i equals `route(prompts[i], session=sessions[i])`.

        All items are checked before any model work, so one bad item fails the whole batch with
        its index in the message.
        """
        if isinstance(prompts, str | bytes | bytearray | Mapping) or not isinstance(prompts, Sequence):
            raise InvalidPromptError(
                f"route_batch expects a list of prompts; got {type(prompts).__name__} "
                "(use route() for one prompt)"
            )
        sessions = list(sessions) if sessions is not None else [None] * len(prompts)
        if len(sessions) != len(prompts):
            raise ValueError(f"{len(sessions)} sessions for {len(prompts)} prompts; give one per prompt")
        where = "prompt" if len(prompts) == 1 else "prompts[{}]"
        read = [routing_text(p, where=where.format(i)) for i, p in enumerate(prompts)]
        if not read:
            return []
        decisions = self._decide([text for text, _ in read])
        out = []
        for (_, follow_up), decision, session in zip(read, decisions, sessions, strict=True):
            decision = decision.model_copy(update={"follow_up": follow_up}) if follow_up else decision
            out.append(self._apply_pin(decision, session) if session else decision)
        return out

    def _apply_pin(self, decision: RouteDecision, session: str) -> RouteDecision:
        """Keep the session's expert unless this prompt moves to another category with confidence."""
        pin = self.sessions.get(session)
        confident = (
            not decision.fallback
            and decision.probabilities[decision.category] >= self.sessions.policy.switch_confidence
        )
        if pin is None or (confident and decision.category != pin.category):
            if not decision.fallback:  # an unsure first turn does not pin the generalist
                self.sessions.put(session, decision.expert, decision.category)
            return decision
        self.sessions.put(session, pin.expert, pin.category)  # refresh its idle clock
        return decision.model_copy(update={"expert": pin.expert, "pinned": True})

    def _decide(self, texts: list[str]) -> list[RouteDecision]:
        with torch.inference_mode():
            logits = self._head(self._encoder.encode(texts))  # [N, K]
            probs = torch.softmax(logits / self._temperature, dim=-1)
            entropy = entropy_nats(probs)  # [N]
        decisions = []
        for p, h in zip(probs.tolist(), entropy.tolist(), strict=True):
            category = self._categories[max(range(len(p)), key=p.__getitem__)]
            fallback = h > self._entropy_threshold
            decisions.append(
                RouteDecision(
                    category=category,
                    expert=self._fallback_expert if fallback else self._category_map[category],
                    probabilities=dict(zip(self._categories, p, strict=True)),
                    entropy=max(h, 0.0),
                    fallback=fallback,
                )
            )
        return decisions


def encoder_for(artifact: RouterArtifact, directory: Path):
    """The encoder an artifact was trained with: shared per process by name, or, for "static-idf" and
    "static-idf-ctx", built around the token weights (and table) saved in the artifact (the word-piece
    table and tokenizer are still shared)."""
    from router.static_encoder import STATIC_CTX_ENCODER, STATIC_IDF_ENCODER, StaticEncoder

    if artifact.encoder == STATIC_IDF_ENCODER:
        return StaticEncoder(STATIC_IDF_ENCODER, load_token_weights(directory))
    if artifact.encoder == STATIC_CTX_ENCODER:
        return StaticEncoder(STATIC_CTX_ENCODER, load_token_weights(directory), load_token_table(directory))
    return get_encoder(artifact.encoder)


_DEFAULT_LOCK = threading.Lock()


def _stale_reason(directory: Path) -> str | None:
    """Why the default artifact must be (re)built, or None when it is current.

    Current = it exists, has this code's layout version and was trained on the corpus the
    committed manifest describes; so `make serve` after a data or recipe change retrains.
    """
    import json

    from router.corpus import MANIFEST_PATH

    if not artifact_exists(directory):
        return f"no router artifact in {directory}"
    try:
        saved = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
        expected = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError) as err:
        return f"router artifact in {directory} is unreadable ({err})"
    if saved.get("version") != ARTIFACT_VERSION:
        return f"router artifact in {directory} has layout {saved.get('version')}, not {ARTIFACT_VERSION}"
    if (saved.get("report") or {}).get("corpus_sha256") != expected:
        return f"router artifact in {directory} was trained on another corpus than {MANIFEST_PATH.name}"
    return None


def ensure_default_artifact(directory: Path) -> None:
    """Train the default artifact into `directory` if it is missing, so a fresh clone can route.

    Written to a temporary sibling folder and renamed into place, so a concurrent reader never sees
    half an artifact. A second process waits on the folder's lock (cluster/build_lock.py), then
    finds it trained, instead of training it again beside the first.
    """
    if _stale_reason(directory) is None:
        return  # no lock to take: a trained artifact on a read-only store loads as it is
    with _DEFAULT_LOCK, build_lock(directory.with_name(f".{directory.name}.lock")):
        stale = _stale_reason(directory)
        if stale is None:
            return
        from router.train import format_report, train_router  # training code only when needed

        logger.warning("%s; training the router from the corpus (seconds with the static encoder)", stale)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
        try:
            artifact, _ = train_router(tmp)
            tmp.chmod(0o755)  # mkdtemp makes it 0700; the zoo is read by other users' workers
            old = directory.with_name(f".{directory.name}-stale-{os.getpid()}")
            if artifact_exists(directory):
                os.rename(directory, old)  # a stale artifact steps aside; readers see old or new, whole
            try:
                os.rename(tmp, directory)  # atomic; also replaces an empty `directory`
            except OSError:
                if not artifact_exists(directory):
                    raise
            shutil.rmtree(old, ignore_errors=True)
            logger.info("wrote router artifact to %s\n%s", directory, format_report(artifact))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def load_router(
    path: str | os.PathLike[str] | None = None,
    *,
    category_map: Mapping[str, str] | None = None,
    fallback_expert: str | None = None,
    entropy_threshold: float | None = None,
    session_policy: SessionPolicy | None = None,
) -> Router:
    """Load a trained router.

    path: artifact folder; None = `cluster.paths.router_dir()`, trained there first if missing
    or stale (older layout, or another corpus than router/data/corpus_manifest.json).
    category_map / fallback_expert / entropy_threshold: replace the artifact's values (the map
    must name an expert for every category).
    """
    if path is None:
        directory = router_dir()
        ensure_default_artifact(directory)
    else:
        directory = Path(path).expanduser().resolve()
    artifact, head = load_artifact(directory)
    return Router(
        artifact,
        head,
        encoder_for(artifact, directory),
        category_map=category_map,
        fallback_expert=fallback_expert,
        entropy_threshold=entropy_threshold,
        session_policy=session_policy,
    )
