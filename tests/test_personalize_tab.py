"""The Personalize tab: its handlers called directly (no server) on a tiny engine, then its API
endpoints in the launched app (`python app.py --model tiny`) through gradio_client, and the page
in headless Chromium (the wiring)."""
from __future__ import annotations

import math
import re
import time

import gradio as gr
import numpy as np
import pandas as pd
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from core import dreambooth, identity, library
from core.errors import UserError
from core.events import Result
from tabs.personalize import LISTED, PersonalizeTab
from tests.browserkit import wait_for_text
from tests.tabkit import assert_readable_loss_axes, example_inputs, fake_request, last, make_ctx

from .conftest import screenshot, start_app


def subject_files(tmp_path, n=2, size=(90, 70)):
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        p = tmp_path / f"subject{i}.png"
        arr = np.clip(np.array([210, 50, 40]) + rng.normal(0, 25, (size[1], size[0], 3)), 0, 255)
        Image.fromarray(arr.astype(np.uint8)).save(p)
        paths.append(str(p))
    return paths


def train_args(files, steps=4, prior=True, name="api dog", visitor="alice"):
    # files, identifier, class, method, steps, lr, rank, prior, lambda, class images, batch, accumulation,
    # gradient checkpointing, snr gamma, sample every, checkpoint every, resume, seed, name,
    # text-encoder LoRA rank (0 = off), visitor id
    # (the browser's; on a private instance like this one everything belongs to "local" anyway)
    return [[handle_file(f) for f in files], "sks", "dog", "LoRA", steps, 1e-3, 4, prior, 1.0, 2, 1, 1, False,
            0, 2, 0, True, 0, name, 0, visitor]


def gen_args(prompts, *slots, visitor="alice"):
    slots = list(slots) + [None, 1.0] * 3
    return [prompts, 0, 3, 5.0, *slots[:6], visitor]


# ---------------------------------------------------------------------------- direct calls

def train_kwargs(files, **over):
    """The training handler's inputs by name (the tiny preset, shortened)."""
    kw = dict(files=files, identifier="sks", class_noun="dog", method="LoRA", steps=2, learning_rate=1e-3, rank=4,
              prior=True, prior_weight=1.0, class_images=2, batch_size=1, grad_accum=1,
              gradient_checkpointing=False, snr_gamma=0, sample_every=1, checkpoint_every=0, resume=False, seed=0,
              name="direct dog", text_encoder_rank=0)
    kw.update(over)
    return kw


def gen_kwargs(prompts="a {v} {c} on the beach", adapter_1=None, weight_1=1.0, **over):
    kw = dict(prompts=prompts, seed=0, steps=2, guidance=5.0, adapter_1=adapter_1, weight_1=weight_1,
              adapter_2=None, weight_2=1.0, adapter_3=None, weight_3=1.0)
    kw.update(over)
    return kw


@pytest.fixture(scope="module")
def tab(engine, one_thread, tmp_path_factory):
    return PersonalizeTab(make_ctx(engine, tmp_path_factory.mktemp("pz-direct")))


@pytest.fixture(scope="module")
def direct_run(tab, tmp_path_factory):
    """One short run with prior preservation, through the handler: (updates, last update)."""
    files = subject_files(tmp_path_factory.mktemp("pz-direct-files"))
    (status, plot, samples, info), updates = last(tab.train(**train_kwargs(files), request=fake_request()))
    return updates, (status, plot, samples, info)


def other_entry(engine, source_id: int, *, method: str, name: str, owner: str = "local", trigger: str = ""):
    """A library entry of another method (B-LoRA, StyleDrop, imported) with the weights of `source_id`."""
    store = library.get_store(engine)
    sd, configs = store.load_adapter(source_id, owner)
    return store.save_adapter(owner=owner, name=name, method=method, base_model=library.base_model_id(engine),
                              state_dict=sd, configs=configs, arch=library.arch_of(engine),
                              trigger_words=trigger, class_name="")


def test_direct_train_streams_saves_and_selects_the_new_adapter(tab, direct_run):
    updates, (status, plot, samples, info) = direct_run
    assert updates[0] == ("**Starting**", None, [], None)  # a fresh plot for this run
    aid = info["adapter_id"]
    entry = library.get_store(tab.engine).get_adapter(aid, "local")
    assert entry.method == "dreambooth" and entry.trigger_words == "sks" and entry.class_name == "dog"
    assert "history" not in info and info["trainable_params"] > 0
    # the closing line, from the run's own figures
    assert status.startswith(f"**Done.** Saved to the library as **direct dog** (#{aid}); instance loss on "
                             f"fixed draws {info['loss_before']:.4f} → {info['loss_after']:.4f}; "
                             f"{info['trainable_params']:,} trained parameters;")
    assert isinstance(plot, pd.DataFrame)
    assert sorted(plot["curve"].unique()) == ["instance", "prior", "total"]
    assert sorted(plot["step"].unique()) == [1, 2]
    for step in (1, 2):  # total = instance + lambda * prior (lambda = 1), read off the plot's own rows
        rows = plot[plot["step"] == step].set_index("curve")["loss"]
        assert rows["total"] == pytest.approx(rows["instance"] + rows["prior"], rel=1e-4, abs=1e-6)
    assert len(samples) >= 2 and all(isinstance(c, str) and c.startswith("step ") for _, c in samples)
    # the new adapter goes into slot 1; the other slots keep what is still listed
    slots = tab.after_train(info, None, str(aid), "424242", request=fake_request())
    assert [u["value"] for u in slots] == [str(aid), str(aid), None]
    assert (f"direct dog · dreambooth · [sks] · #{aid}", str(aid)) in slots[0]["choices"]


def test_trained_adapter_reads_the_runs_result():
    info = {"adapter_id": 7, "adapter_name": "rex", "loss_before": 0.5, "loss_after": 0.25,
            "trainable_params": 1234, "seconds": 3.5, "history": [{"step": 1, "loss": 0.4}],
            "text_encoder_lora": ["text_encoder"], "sample_prompts": ["a sks dog"]}
    t = dreambooth.TrainedAdapter.from_result(Result(info=info))
    assert (t.adapter_id, t.name, t.loss_before, t.loss_after, t.trainable_params, t.seconds) == \
        (7, "rex", 0.5, 0.25, 1234, 3.5)
    assert t.history == ({"step": 1, "loss": 0.4},) and t.text_encoder_lora == ("text_encoder",)
    with pytest.raises(AttributeError):
        t.name = "other"  # frozen
    # a run's non-main process saves nothing: no library entry, figures it does not have are NaN
    other = dreambooth.TrainedAdapter.from_result(Result(info={"adapter_id": None, "loss_after": 0.3}))
    assert other.adapter_id is None and other.name == "" and math.isnan(other.loss_before)


def test_lists_only_dreambooth_and_imported_adapters(tab, direct_run):
    aid = direct_run[1][3]["adapter_id"]
    engine = tab.engine
    blora = other_entry(engine, aid, method="blora", name="v1", trigger="v1")
    style = other_entry(engine, aid, method="styledrop", name="StyleDrop round 1")
    imported = other_entry(engine, aid, method="imported", name="someone's lora")
    listed = [a.id for a in dreambooth.subject_adapters(engine, owner="local")]
    assert imported.id in listed and aid in listed
    assert blora.id not in listed and style.id not in listed
    assert listed == sorted(listed, reverse=True)  # newest first
    slots = tab.refresh_lists(str(blora.id), str(aid), None, request=fake_request())
    assert [u["value"] for u in slots] == [None, str(aid), None]  # a B-LoRA picked before is dropped
    assert {value for _, value in slots[0]["choices"]} == {str(i) for i in listed}
    assert "DreamBooth" in LISTED and "imported" in LISTED


def test_export_writes_the_selected_entry(tab, direct_run, tmp_path):
    from core import lora_format

    aid = direct_run[1][3]["adapter_id"]
    engine = tab.engine
    other_entry(engine, aid, method="blora", name="v1", trigger="v1")  # the newest entry: first in lists
    newer = other_entry(engine, aid, method="imported", name="newer lora")
    first_listed = dreambooth.subject_adapters(engine, owner="local")[0]
    assert first_listed.id == newer.id != aid
    path, message = tab.export(str(aid), request=fake_request())
    assert path.endswith("direct_dog.safetensors") and "v1" not in path
    assert "**direct dog**" in message and f"#{aid}" in message and "kohya" in message
    sd, _ = lora_format.read_safetensors(path)
    assert sd and all(k.startswith("lora_unet_") for k in sd)  # kohya keys
    with pytest.raises(gr.Error, match="slot 1"):
        tab.export(None, request=fake_request())


def test_import_round_trip_and_bad_files(tab, direct_run, tmp_path):
    import torch

    aid = direct_run[1][3]["adapter_id"]
    path, _ = tab.export(str(aid), request=fake_request())
    message = tab.import_lora(path, request=fake_request())
    m = re.fullmatch(r"Imported \*\*direct\\_dog.*\*\* \(#(\d+), kohya format, rank 4\)\.", message)
    assert m, message
    entry = library.get_store(tab.engine).get_adapter(int(m.group(1)), "local")
    assert entry.method == "imported" and entry.base_model == library.base_model_id(tab.engine)
    assert entry.id in [a.id for a in dreambooth.subject_adapters(tab.engine, owner="local")]
    pickle = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(2)}, pickle)
    with pytest.raises(gr.Error, match="pickle"):
        tab.import_lora(str(pickle), request=fake_request())
    with pytest.raises(gr.Error, match="Choose a .safetensors"):
        tab.import_lora(None, request=fake_request())


def test_import_arguments_describe_the_engine(tab):
    args = library.import_arguments(tab.engine)
    assert set(args) == {"base_model", "arch", "unet_config", "base_modules"}
    assert args["base_model"] == tab.engine.spec.source and args["arch"] == "sdxl-tiny"
    q = tab.engine.pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q
    unet = args["base_modules"]["unet"]
    module = "mid_block.attentions.0.transformer_blocks.0.attn1.to_q"
    hits = [shape for name, shape in unet.items() if name.endswith(module)]
    assert hits == [(q.in_features, q.out_features)]
    assert set(args["base_modules"]) == {"unet", "text_encoder", "text_encoder_2"}  # the tiny SDXL family


def test_fill_triggers_takes_the_first_adapter_with_a_trigger(tab, direct_run):
    aid = direct_run[1][3]["adapter_id"]
    engine = tab.engine
    plain = other_entry(engine, aid, method="imported", name="no trigger")
    named = other_entry(engine, aid, method="imported", name="cat lora", trigger="zwx")
    templates = ["a {v} {c} on the beach", "{v} {c}", "a photo"]
    assert dreambooth.fill_triggers(engine, templates, [plain.id, aid, named.id], owner="local") == \
        ["a sks dog on the beach", "sks dog", "a photo"]
    # a trigger without a class noun, and no trigger at all: "{c}" is "object", "{v}" goes
    assert dreambooth.fill_triggers(engine, templates, [named.id, aid], owner="local") == \
        ["a zwx object on the beach", "zwx object", "a photo"]
    assert dreambooth.fill_triggers(engine, templates, [plain.id], owner="local") == \
        ["a object on the beach", "object", "a photo"]
    with pytest.raises(UserError, match="not found"):
        dreambooth.fill_triggers(engine, templates, [aid], owner="someone-else")


def test_direct_generate_fills_the_prompts_and_names_the_adapters(tab, direct_run):
    aid = direct_run[1][3]["adapter_id"]
    (gallery, status), updates = last(tab.generate(**gen_kwargs("a {v} {c} on the beach\n\n{v} {c}",
                                                                str(aid), 0.5), request=fake_request()))
    assert [caption for _, caption in gallery] == ["a sks dog on the beach", "sks dog"]
    assert all(im.size == (tab.engine.resolution,) * 2 for im, _ in gallery)
    assert status.endswith(f"**Done.** Adapters: #{aid} × 0.5.")
    (gallery, status), _ = last(tab.generate(**gen_kwargs("a {v} {c}"), request=fake_request()))
    assert [c for _, c in gallery] == ["a object"] and status.endswith("Adapters: none (base model).")


def test_drift_without_the_adapter_is_no_drift(tab, direct_run):
    """At weight 0 the adapted half is the frozen model: similarity 1 for every seed (the table
    reads the job's own figures)."""
    aid = direct_run[1][3]["adapter_id"]
    (gallery, status, md), _ = last(tab.drift(str(aid), 0.0, 5, 2, 5.0, request=fake_request()))
    assert status.endswith("**Done.**") and '"a dog"' in md
    assert [c for _, c in gallery] == [f"{who}, seed {s}" for who in ("frozen", "adapter") for s in (5, 6, 7, 8)]
    frozen = np.stack([np.asarray(im, np.float32) for im, _ in gallery[:4]])
    adapted = np.stack([np.asarray(im, np.float32) for im, _ in gallery[4:]])
    np.testing.assert_array_equal(frozen, adapted)
    assert re.findall(r"\| (\d+) \| ([\d.]+) \|", md) == [(str(s), "1.000") for s in (5, 6, 7, 8)]
    with pytest.raises(gr.Error, match="slot 1"):
        list(tab.drift(None, 1.0, 0, 2, 5.0, request=fake_request()))


@pytest.mark.parametrize("handler, over, field", [
    ("train", dict(steps=0), "Steps"), ("train", dict(learning_rate=math.nan), "Learning rate"),
    ("train", dict(method="both"), "What is trained"), ("train", dict(seed=-1), "Seed"),
    ("train", dict(prior="yes"), "Prior preservation"), ("train", dict(class_noun="x" * 101), "Class noun"),
    ("train", dict(text_encoder_rank=300), "Text-encoder LoRA rank"),
    ("train", dict(files=[]), "Upload between 1 and 20"),
    ("generate", dict(adapter_1="abc"), "Adapter 1"), ("generate", dict(weight_2=5), "Weight \\(adapter 2\\)"),
    ("generate", dict(guidance="much"), "Guidance"), ("generate", dict(adapter_3="999999"), "not found"),
])
def test_bad_values_are_refused_naming_the_field(tab, tmp_path, handler, over, field):
    if handler == "train":
        kw = {**train_kwargs(subject_files(tmp_path, 1)), **over}
    else:
        kw = gen_kwargs(**over)
    with pytest.raises(gr.Error, match=field):
        list(getattr(tab, handler)(**kw, request=fake_request()))
    assert tab.engine.jobs.running() == []


def test_small_handlers(tab, tmp_path):
    files = subject_files(tmp_path, 2, size=(90, 70))
    res = tab.engine.resolution
    assert [im.size for im in tab.show_crops(files)] == [(res, res)] * 2
    assert tab.show_crops(None) == []
    assert tab.describe_identifier("sks", "teapot").startswith("Instance prompt: **a sks teapot** · class prompt: "
                                                               "**a teapot**")
    assert "**Warning:**" in tab.describe_identifier("two words", "dog")
    assert tab.describe_identifier("", "dog") == "Give an identifier and a class noun."
    with pytest.raises(gr.Error, match="Class noun"):
        tab.describe_identifier("sks", 5)
    q = dreambooth.PRESETS["Quick test (tiny models)"]
    assert tab.apply_preset("Quick test (tiny models)") == ("LoRA", q["steps"], q["learning_rate"], q["rank"],
                                                           q["prior"], q["prior_weight"], q["num_class_images"],
                                                           q["batch_size"], q["grad_accum"],
                                                           q["gradient_checkpointing"], q["sample_every"])
    assert tab.apply_preset("SD 1.5 full fine-tune (paper)")[0] == "Full fine-tune (SD 1.5 only)"
    with pytest.raises(gr.Error, match="Preset"):
        tab.apply_preset("fastest")
    assert tab.prompt_family("Novel views").splitlines() == dreambooth.PROMPT_FAMILIES["Novel views"]


def test_suggested_tokens_stay_listed(tab):
    """The suggestions have a field of their own: choosing the first as the identifier (which
    redraws the prompts line) leaves the list in view."""
    identifier, suggestions = tab.suggest_tokens()
    tokens = re.findall(r"`(\w+)`", suggestions.split("(using")[0])
    assert len(tokens) == 6 and tokens[0] == identifier
    assert dreambooth.check_identifier(tab.engine.pipe.tokenizer, identifier) == []  # one rare token
    with gr.Blocks() as demo:
        PersonalizeTab(tab.ctx).build()
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    suggest = next(d for d in demo.fns.values() if getattr(d.fn, "__name__", "") == "suggest_tokens")
    assert [o.elem_id for o in suggest.outputs] == ["pz-identifier", "pz-suggestions"]
    on_identifier = [d for d in demo.fns.values()
                     if any(t[0] is by_id["pz-identifier"]._id and t[1] == "change" for t in d.targets)]
    assert on_identifier and all(by_id["pz-suggestions"] not in d.outputs for d in on_identifier)


def test_stop_reaches_only_this_pages_job(tab, tmp_path):
    mine, other = fake_request("page-a"), fake_request("page-b")
    before = {a.id for a in library.get_store(tab.engine).list_adapters("local")}
    updates, stopped = [], False
    steps = 1000  # far more than run before the Stop lands (a step is well under a second here)
    for u in tab.train(**train_kwargs(subject_files(tmp_path, 1), steps=steps, prior=False, sample_every=0),
                       request=mine):
        updates.append(u)
        if isinstance(u[1], pd.DataFrame) and not stopped:  # the first plotted step: the job is training
            tab.stop(other)  # another page's Stop: no effect
            assert tab.engine.jobs.running()
            tab.stop(mine)
            stopped = True
    status = updates[-1][0]
    assert "Stopped" in status and "Nothing was saved" in status
    plots = [u[1] for u in updates if isinstance(u[1], pd.DataFrame)]
    assert 1 <= plots[-1]["step"].max() < steps  # the curve so far stays
    assert {a.id for a in library.get_store(tab.engine).list_adapters("local")} == before
    assert tab.engine.jobs.running() == [] and not tab.engine.gpu_lock.locked()
    updates, stopped = [], False
    for u in tab.generate(**gen_kwargs("a cat", steps=40), request=mine):
        updates.append(u)
        if isinstance(u[0], list) and not stopped:  # the first preview: the job is denoising
            tab.stop(mine)
            stopped = True
    assert "Stopped" in updates[-1][1] and "not finished" in updates[-1][1]
    assert not any(isinstance(u[0], list) and len(u[0]) and isinstance(u[0][0], tuple) for u in updates)
    assert tab.engine.jobs.running() == []


def test_owners_are_kept_apart_on_a_shared_instance(engine, one_thread, direct_run, tmp_path):
    tab = PersonalizeTab(make_ctx(engine, tmp_path, shared=True))
    alice, bob = identity.issue(tmp_path), identity.issue(tmp_path)
    path, _ = PersonalizeTab(make_ctx(engine, tmp_path)).export(str(direct_run[1][3]["adapter_id"]),
                                                                 request=fake_request())
    message = tab.import_lora(path, visitor=alice, request=fake_request("a1"))
    aid = re.search(r"#(\d+)", message).group(1)
    mine = tab.refresh_lists(visitor=alice, request=fake_request("a2"))  # another page, same visitor
    theirs = tab.refresh_lists(visitor=bob, request=fake_request("b1"))
    assert aid in {value for _, value in mine[0]["choices"]}
    assert aid not in {value for _, value in theirs[0]["choices"]}
    with pytest.raises(gr.Error, match="not found"):
        list(tab.generate(**gen_kwargs("a {v}", aid), visitor=bob, request=fake_request("b1")))
    with pytest.raises(gr.Error, match="not found"):
        tab.export(aid, visitor=bob, request=fake_request("b1"))
    with pytest.raises(gr.Error, match="not found"):
        list(tab.drift(aid, 1.0, 0, 2, 5.0, visitor=bob, request=fake_request("b1")))
    with pytest.raises(gr.Error):
        tab.refresh_lists(visitor="forged-token", request=fake_request("c1"))
    (gallery, status), _ = last(tab.generate(**gen_kwargs("a {v}", aid), visitor=alice, request=fake_request("a3")))
    assert f"#{aid}" in status and len(gallery) == 1


# ---------------------------------------------------------------------------- the launched app

def drawn_lines(page, selector) -> list[tuple[str, int]]:
    """(stroke colour, number of points) of each line the plot's SVG draws."""
    found = page.evaluate("""sel => [...document.querySelectorAll(sel + ' g.mark-line path')].map(
        p => [p.getAttribute('stroke') || '', p.getAttribute('d') || ''])""", selector)
    return [(stroke, len(re.findall(r"[ML]", d))) for stroke, d in found
            if stroke and stroke != "none" and re.search(r"L", d)]


def arrays(gallery):
    return np.stack([np.asarray(Image.open(item["image"]["path"] if isinstance(item.get("image"), dict)
                                           else item["image"]).convert("RGB"), dtype=np.float32)
                     for item in gallery])


@pytest.fixture(scope="module")
def pz_app(tmp_path_factory):
    """The app for this module (start_app gives it one intra-op thread: training beside a
    browser on two shared cores otherwise oversubscribes OpenMP, 20 s/step instead of 1 s)."""
    app = start_app(tmp_path_factory.mktemp("pz-app"))
    yield app
    app.stop()


@pytest.fixture(scope="module")
def client(pz_app):
    return Client(pz_app.url, verbose=False)


@pytest.fixture(scope="module")
def trained(client, tmp_path_factory):
    files = subject_files(tmp_path_factory.mktemp("pz"))
    status, plot, samples, info = client.predict(*train_args(files), api_name="/personalize_train")
    return status, plot, samples, info


def test_api_train_streams_and_saves(trained):
    status, plot, samples, info = trained
    assert "Done" in status and "api dog" in status
    assert info["adapter_id"] >= 1 and info["trainable_params"] > 0
    assert len(samples) >= 2  # samples at step 2 and at the end
    data = plot.get("data") or (plot.get("value") or {}).get("data")
    assert len(data) >= 4 and {"total", "instance", "prior"} <= {row[-1] for row in data}


def test_api_generate_export_import_round_trip(client, pz_app, trained, tmp_path):
    aid = str(trained[3]["adapter_id"])
    prompts = "a sks dog on the beach\na sks dog"
    plain, st = client.predict(*gen_args(prompts), api_name="/personalize_generate")
    adapted, st2 = client.predict(*gen_args(prompts, aid, 1.0), api_name="/personalize_generate")
    assert "Done" in st2 and f"#{aid}" in st2
    assert len(adapted) == 2
    assert np.abs(arrays(adapted) - arrays(plain)).mean() > 1.0

    # another page load (a reload: a new session, and here another visitor id) still has it: on a
    # private instance the library belongs to "local", not to the page that trained it
    other = Client(pz_app.url, verbose=False)
    again, st3 = other.predict(*gen_args(prompts, aid, 1.0, visitor="bob"), api_name="/personalize_generate")
    assert "Done" in st3 and f"#{aid}" in st3
    np.testing.assert_array_equal(arrays(again), arrays(adapted))

    path, msg = client.predict(aid, "alice", api_name="/personalize_export")
    assert "kohya" in msg and str(path).endswith(".safetensors")
    msg = client.predict(handle_file(path), "alice", api_name="/personalize_import")
    m = re.search(r"#(\d+), kohya format", msg)
    assert m, msg
    reimported, _ = client.predict(*gen_args(prompts, m.group(1), 1.0), api_name="/personalize_generate")
    np.testing.assert_allclose(arrays(reimported), arrays(adapted), atol=2.0)


def test_api_language_drift(client, trained):
    """The class prompt with and without the adapter, same seeds: at weight 0 the two halves are
    the same images (similarity 1 for every seed); at weight 1 the class has moved."""
    aid = str(trained[3]["adapter_id"])
    off, status, md = client.predict(aid, 0.0, 0, 3, 5.0, "alice", api_name="/personalize_drift")
    assert "Done" in status and '"a dog"' in md
    frozen, adapted = arrays(off[:4]), arrays(off[4:])
    np.testing.assert_array_equal(frozen, adapted)
    assert re.findall(r"\| \d+ \| ([\d.]+) \|", md) == ["1.000"] * 4
    on, status, md = client.predict(aid, 1.0, 0, 3, 5.0, "alice", api_name="/personalize_drift")
    np.testing.assert_array_equal(arrays(on[:4]), frozen)  # the frozen half does not depend on the weight
    assert np.abs(arrays(on[4:]) - frozen).mean() > 0.5
    assert "Mean" in md and len(re.findall(r"\| \d+ \| ([-\d.]+) \|", md)) == 4


def test_api_train_with_text_encoder_lora(client, tmp_path):
    args = train_args(subject_files(tmp_path, 1), steps=2, prior=False, name="te dog")
    args[-2] = 2  # text-encoder LoRA rank
    status, plot, samples, info = client.predict(*args, api_name="/personalize_train")
    assert "Done" in status and info["text_encoder_lora"] == ["text_encoder", "text_encoder_2"]


@pytest.mark.parametrize("kind,message", [
    ("no-files", "Upload between 1 and 20"),
    ("not-an-image", "could not be read"),
    ("empty-class", "class"),
    ("bad-identifier", "one short word"),
])
def test_bad_training_input_is_a_clear_error(client, pz_app, tmp_path, kind, message):
    files = subject_files(tmp_path, 1)
    args = train_args(files, steps=1, prior=False)
    if kind == "no-files":
        args[0] = []
    elif kind == "not-an-image":
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"this is text")
        args[0] = [handle_file(str(bad))]
    elif kind == "empty-class":
        args[2] = " "
    elif kind == "bad-identifier":
        args[1] = "two words!"
    with pytest.raises(AppError, match=message):
        client.predict(*args, api_name="/personalize_train")
    assert pz_app.alive()


def test_bad_imports_are_clear_errors(client, tmp_path):
    import torch
    from safetensors.torch import save_file

    pickle = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(2)}, pickle)
    with pytest.raises(AppError, match="pickle"):
        client.predict(handle_file(str(pickle)), None, api_name="/personalize_import")
    wrong = tmp_path / "other.safetensors"
    save_file({"unet.mid_block.nothing_here.to_q.lora_A.weight": torch.zeros(4, 32),
               "unet.mid_block.nothing_here.to_q.lora_B.weight": torch.zeros(32, 4)}, str(wrong))
    with pytest.raises(AppError, match="does not fit"):
        client.predict(handle_file(str(wrong)), None, api_name="/personalize_import")
    with pytest.raises(AppError, match="adapter"):
        client.predict(*gen_args("a cat", "999999", 1.0), api_name="/personalize_generate")


@pytest.mark.browser
def test_browser_personalize(pz_app, page, tmp_path):
    files = subject_files(tmp_path, 2)
    page.goto(pz_app.url)
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-files input[type=file]").set_input_files(files)
    page.wait_for_function("() => document.querySelectorAll('#pz-crops img').length >= 2", timeout=60_000)
    page.locator("#pz-class textarea, #pz-class input").first.fill("teapot")
    wait_for_text(page, "#pz-idnote", "a sks teapot", timeout=20_000)
    # a short run without prior preservation first (one curve), then the default run with it:
    # the plot must draw the new run's three curves, not only the first run's "total"
    page.get_by_text("Training settings").filter(visible=True).first.click()
    page.locator("#pz-prior input[type=checkbox]").uncheck()
    page.locator("#pz-steps input").fill("2")
    page.locator("#pz-steps input").press("Tab")
    page.locator("#pz-train").click()
    wait_for_text(page, "#pz-status", "Done", timeout=240_000)
    assert len(drawn_lines(page, "#pz-loss")) == 1
    page.locator("#pz-prior input[type=checkbox]").check()
    page.locator("#pz-steps input").fill("12")  # the preset's: samples at steps 6 and 12
    page.locator("#pz-steps input").press("Tab")
    page.locator("#pz-train").click()
    page.wait_for_function("() => !document.querySelector('#pz-status').innerText.includes('Done')",
                           timeout=30_000)
    wait_for_text(page, "#pz-status", "Done", timeout=240_000)
    assert page.locator("#pz-samples img").count() >= 2
    # the three loss curves are really drawn (not just the axes): one SVG line path each, over
    # several steps, in three colours
    deadline = time.monotonic() + 15
    while len(drawn_lines(page, "#pz-loss")) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    lines = drawn_lines(page, "#pz-loss")
    assert len(lines) == 3 and len({stroke for stroke, _ in lines}) == 3, lines
    assert all(points >= 2 for _, points in lines), lines
    legend = page.locator("#pz-loss").inner_text()
    assert all(name in legend for name in ("total", "instance", "prior")), legend
    status = page.locator("#pz-status").inner_text()
    assert "sks teapot" in status
    screenshot(page, "personalize-trained")
    # the new adapter is selected in slot 1: generate with it
    page.wait_for_function("() => (document.querySelector('#pz-adapter-1 input') || {}).value"
                           " && document.querySelector('#pz-adapter-1 input').value.includes('sks teapot')",
                           timeout=30_000)
    page.locator("#pz-generate").click()
    page.wait_for_function("() => document.querySelector('#pz-gen-status').innerText.includes('Done')"
                           " && document.querySelectorAll('#pz-gallery img').length >= 2", timeout=120_000)
    assert "a sks teapot on the beach" in page.locator("#pz-gallery").inner_html() or \
        page.locator("#pz-gallery img").count() >= 2
    screenshot(page, "personalize-generated")
    # a reload is a new session: the subject is still in the library lists (owner "local")
    page.reload()
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-adapter-1 input").click()
    page.wait_for_function("() => [...document.querySelectorAll('ul[role=listbox] li, [role=option]')]"
                           ".some(o => o.innerText.includes('sks teapot'))", timeout=30_000)
    page.keyboard.press("Escape")
    # "Suggest rare tokens": the first suggestion becomes the identifier (its prompts line follows)
    # and the list of suggestions stays in view
    page.locator("#pz-suggest").click()
    wait_for_text(page, "#pz-suggestions", "Rare single tokens", timeout=20_000)
    first = re.search(r"using (\w+)", page.locator("#pz-suggestions").inner_text()).group(1)
    page.wait_for_function("t => document.querySelector('#pz-idnote').innerText.includes('a ' + t + ' ')", arg=first,
                           timeout=20_000)
    time.sleep(1.0)
    listed = page.locator("#pz-suggestions").inner_text()
    assert "Rare single tokens" in listed and len(re.findall(r"\b[a-z]{3,4}\b", listed.split("(using")[0])) >= 6


def test_shared_instance_keeps_each_visitors_adapters(tmp_path_factory, tmp_path):
    """--multi-user: the adapter belongs to the visitor id that trained it (kept in the browser,
    so it survives reloads), not to the page session; another visitor cannot use it."""
    app = start_app(tmp_path_factory.mktemp("pz-shared"), "--multi-user")
    try:
        files = subject_files(tmp_path, 1)
        alice, bob = (Client(app.url, verbose=False).predict(api_name="/visitor") for _ in range(2))
        _, _, _, info = Client(app.url, verbose=False).predict(
            *train_args(files, steps=1, prior=False, name="alice dog", visitor=alice),
            api_name="/personalize_train")
        aid = str(info["adapter_id"])
        _, st = Client(app.url, verbose=False).predict(*gen_args("a sks dog", aid, 1.0, visitor=alice),
                                                       api_name="/personalize_generate")
        assert "Done" in st and f"#{aid}" in st  # alice again, from a new session
        with pytest.raises(AppError, match="adapter was not found"):
            Client(app.url, verbose=False).predict(*gen_args("a sks dog", aid, 1.0, visitor=bob),
                                                   api_name="/personalize_generate")
        assert app.alive()
    finally:
        app.stop()


# ---------------------------------------------------------------------------- a newcomer's first run (issue 16)

def test_the_example_fills_the_subject_and_trains(tab):
    """The Example fills the three mug views, the identifier and the class; Train runs from it
    (the tiny preset, shortened here), and the page says how long each preset takes."""
    from tabs import personalize
    from tabs.common import example

    with gr.Blocks() as demo:
        PersonalizeTab(tab.ctx).build()
    assert example_inputs(demo, "pz-examples") == ["pz-files", "pz-identifier", "pz-class"]
    files, word, cls = personalize.EXAMPLES[0]
    assert (files, word, cls) == (["subject-mug-1.png", "subject-mug-2.png", "subject-mug-3.png"], "sks", "mug")
    status = last(tab.train(**train_kwargs([example(n) for n in files], identifier=word, class_noun=cls, steps=2,
                                           name="example mug"), request=fake_request()))[0][0]
    assert status.startswith("**Done.** Saved to the library as **example mug**")
    # every preset says how long it takes: measured for the tiny one, labelled estimates for the others
    for name in dreambooth.PRESETS:
        note = tab.describe_preset(name)
        assert note.startswith("<small>Takes ") and ("(measured)" in note) == (name == "Quick test (tiny models)")
        assert "(measured)" in note or "estimate" in note
    with pytest.raises(gr.Error, match="Preset"):
        tab.describe_preset("fastest")


def test_the_loss_plot_spans_the_run_from_zero(tab):
    """A run stopped at step 1 has readable axes (issue 16 item 9): steps from 0 to the run's
    last, loss from 0; the page's plot starts with the preset's step count."""
    assert tab.loss_axes(12) == {"x_lim": [0, 12], "y_lim": [0, None]}
    assert tab.loss_axes("") == {"x_lim": [0, None], "y_lim": [0, None]}
    assert tab.loss_axes(-3) == {"x_lim": [0, None], "y_lim": [0, None]}
    assert tab.update_loss_axes(800)["x_lim"] == [0, 800]
    with gr.Blocks() as demo:
        PersonalizeTab(tab.ctx).build()
    plot = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "pz-loss")
    steps = dreambooth.PRESETS[dreambooth.default_preset(tab.engine)]["steps"]
    assert plot.x_lim == [0, steps] and plot.y_lim == [0, None]


@pytest.mark.browser
def test_browser_a_run_stopped_at_its_first_step_has_a_readable_plot(pz_app, page, tmp_path):
    """Issue 16 item 9: one point alone used to give each axis an empty range, drawn as a lone
    "1.000000" tick; the axes now run from 0 (steps up to the run's last)."""
    page.goto(pz_app.url)
    page.get_by_role("tab", name="Personalize").click()
    page.locator("#pz-files input[type=file]").set_input_files(subject_files(tmp_path, 1))
    page.wait_for_function("() => document.querySelectorAll('#pz-crops img').length >= 1", timeout=60_000)
    page.get_by_text("Training settings").filter(visible=True).first.click()
    page.locator("#pz-prior input[type=checkbox]").uncheck()
    page.locator("#pz-steps input").fill("1")
    page.locator("#pz-steps input").press("Tab")
    page.locator("#pz-train").click()
    wait_for_text(page, "#pz-status", "Done")
    assert_readable_loss_axes(page, "#pz-loss")
