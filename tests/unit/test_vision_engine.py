"""Images in the worker's engine (issue 16), on the real default model with the random
test projector (tests/vision_fixture.py), without actors: the ingress's layout, the
worker's encoding, image rows decoded in their own llama_decode calls beside the shared
batch, prefix reuse that ends inside an image, and recompute."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import msgspec
import pytest

from inferflux.ingress.images import image_prompt, read_image
from inferflux.ingress.request_types import ChatMessage, ImagePart, ImageURL, TextPart
from inferflux.ingress.served import ServedModel
from inferflux.kvcache import staging
from inferflux.messages import Admit, ImageInput, SamplingParams
from inferflux.worker.engine import Engine
from inferflux.worker.llama import Context, Model
from inferflux.worker.projector import Picture, Projector
from inferflux.worker.sequence import ImageRows
from tests.vision_fixture import TOKENS_PER_IMAGE, png, tiny_mmproj

pytestmark = pytest.mark.model
GREEDY = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)


@dataclass
class Rig:
    served: ServedModel
    model: Model
    context: Context
    engine: Engine
    projector: Projector

    def prompt(self, text: str, *images: bytes) -> tuple[list[int], list[ImageInput]]:
        parts: list[TextPart | ImagePart] = [
            ImagePart(ImageURL("data:image/png;base64," + base64.b64encode(i).decode()))
            for i in images
        ]
        messages = [ChatMessage("user", [*parts, TextPart(text)])]
        decoded = [read_image(p.image_url.url, "x") for p in parts if isinstance(p, ImagePart)]
        return image_prompt(self.served, messages, decoded)

    def rows(self, images: list[ImageInput]) -> list[ImageRows]:
        out = []
        for image in images:
            chunks = self.projector.encode(Picture(image.width, image.height, image.rgb))
            out += [ImageRows(s, c) for (s, _), c in zip(image.spans, chunks, strict=True)]
        return out

    def run(self, admits: list[tuple[Admit, list[ImageRows]]]) -> dict[int, list[int]]:
        for admit, rows in admits:
            self.engine.admit(admit, rows)
        tokens: dict[int, list[int]] = {a.seq_id: [] for a, _ in admits}
        for _ in range(500):
            for out in self.engine.step().outputs:
                assert out.finish_reason in (None, "length"), out.error
                tokens[out.seq_id] += out.token_ids
            if self.engine.idle:
                return tokens
        raise AssertionError("did not finish")


@pytest.fixture(scope="module")
def rig(model_path: str) -> Iterator[Rig]:
    mmproj = str(tiny_mmproj())
    served = ServedModel.open("m", model_path, 1024, mmproj)
    model = Model(model_path)
    context = Context(model, n_ctx=4 * 512, n_seq_max=4, n_batch=512, n_threads=2)
    projector = Projector(mmproj, model, threads=2)
    engine = Engine(model, context)
    try:
        yield Rig(served, model, context, engine, projector)
    finally:
        engine.close()
        projector.close()
        context.close()
        model.close()
        assert served.projector is not None
        served.projector.close()


def test_an_image_is_laid_out_as_image_ids_between_the_models_marker_tokens(rig: Rig) -> None:
    prompt, images = rig.prompt("What is in the picture?", png(seed=1))
    (image,) = images
    assert sum(rows for _, rows in image.spans) == TOKENS_PER_IMAGE
    ids = [t for t in prompt if t < 0]
    assert len(ids) == TOKENS_PER_IMAGE
    assert [prompt[s : s + n] for s, n in image.spans] == [ids[:16], ids[16:]]
    # The same picture has the same ids (a prefix-cache key); another picture other ids.
    again, _ = rig.prompt("What is in the picture?", png(seed=1))
    other, _ = rig.prompt("What is in the picture?", png(seed=2))
    assert again == prompt and other != prompt
    assert [t for t in other if t >= 0] == [t for t in prompt if t >= 0]


def test_image_embeddings_are_the_models_width_and_change_the_output(rig: Rig) -> None:
    prompt_a, images_a = rig.prompt("Describe it.", png(seed=1))
    rows_a = rig.rows(images_a)
    assert all(r.rows.shape == (16, 576) for r in rows_a)
    prompt_b, images_b = rig.prompt("Describe it.", png(seed=5, width=30, height=60))
    a = rig.run([(Admit(1, 0, prompt_a, GREEDY, images=images_a), rows_a)])[1]
    b = rig.run([(Admit(2, 1, prompt_b, GREEDY, images=images_b), rig.rows(images_b))])[2]
    assert len(a) == len(b) == GREEDY.max_tokens
    assert a != b  # the image reached the model (random weights: not that it understood)


def test_text_only_sequences_beside_an_image_give_their_solo_outputs(rig: Rig) -> None:
    texts = [rig.served.tokenizer.tokenize(f"<|im_start|>user\nCount to {n}<|im_end|>\n"
                                           "<|im_start|>assistant\n", add_special=True)
             for n in (5, 9)]  # fmt: skip
    solo = [rig.run([(Admit(10 + i, i, t, GREEDY), [])])[10 + i] for i, t in enumerate(texts)]
    prompt, images = rig.prompt("Describe it.", png(seed=3))
    together = rig.run(
        [
            (Admit(20, 0, texts[0], GREEDY), []),
            (Admit(21, 1, prompt, GREEDY, images=images), rig.rows(images)),
            (Admit(22, 2, texts[1], GREEDY), []),
        ]
    )
    assert together[20] == solo[0] and together[22] == solo[1]
    alone = rig.run([(Admit(30, 3, prompt, GREEDY, images=images), rig.rows(images))])[30]
    assert together[21] == alone


def test_reuse_that_ends_inside_an_image_and_recompute_continue_identically(rig: Rig) -> None:
    prompt, images = rig.prompt("Describe it.", png(seed=4))
    rows = rig.rows(images)
    cold = rig.run([(Admit(40, 0, prompt, GREEDY, images=images), rows)])[40]
    # Slot 0 now holds prompt + output; a prefix ending 5 rows into the second chunk.
    middle = images[0].spans[1][0] + 5
    reused = rig.run(
        [(Admit(41, 1, prompt, GREEDY, n_cached=middle, copy_from=0, images=images), rows)]
    )[41]
    assert reused == cold
    # Recompute after a crash: prompt + the first 10 tokens, the images again.
    resumed = rig.run(
        [(Admit(42, 2, prompt + cold[:10], GREEDY, n_generated=10, images=images), rows)]
    )[42]
    assert cold[:10] + resumed == cold


def test_an_image_prompts_kv_state_hands_over_and_decodes_on_identically(rig: Rig) -> None:
    """Disaggregated prefill of a prompt with an image (issue 14): the prefill side
    encodes the image and exports the prompt's KV; the decode side loads it (no image
    to encode there) and decodes on from the prefill side's first token."""
    prompt, images = rig.prompt("Describe it.", png(seed=3))
    alone = rig.run([(Admit(1, 0, prompt, GREEDY, images=images), rig.rows(images))])[1]
    name = staging.new_name()
    try:
        first = msgspec.structs.replace(GREEDY, max_tokens=1)
        rig.engine.admit(
            Admit(2, 1, prompt, first, images=images, export_to=name), rig.rows(images)
        )
        outputs = []
        while not rig.engine.idle:
            outputs += [o for o in rig.engine.step().outputs if o.seq_id == 2]
        [token] = [t for o in outputs for t in o.token_ids]
        state = outputs[-1].kv_state
        assert state is not None and state.n_tokens == len(prompt)
        handed = Admit(3, 2, prompt + [token], GREEDY, len(prompt), n_generated=1, kv_state=state)
        assert [token] + rig.run([(handed, [])])[3] == alone
    finally:
        staging.remove(name)
