import pytest
import yaml

from domainmae.recipes import RecipeError, list_recipes, load_recipe, resolve_recipe


def test_builtin_recipes_compose_and_validate():
    recipes = list_recipes()
    assert {"cellpainting", "sentinel"} <= set(recipes)
    cp = load_recipe("cellpainting")
    assert cp.data.channels == ["DNA", "ER", "RNA", "AGP", "Mito"]  # from configs/channels
    assert cp.model.size == "vit_small" and cp.model.mask_strategy == "tied"
    assert cp.train.base_lr == 1.5e-4 and cp.train.betas == (0.9, 0.95)  # from configs/optim
    demo = load_recipe("cellpainting", demo=True)
    assert demo.model.size == "vit_tiny" and demo.train.max_steps is not None
    assert demo.data.path.endswith("load_data.csv")


def test_set_overrides_any_field():
    r = load_recipe("cellpainting", ["train.batch_size=64", "model.mask_ratio=0.6", "data.augment.rot90=false"])
    assert r.train.batch_size == 64 and r.model.mask_ratio == 0.6 and r.data.augment.rot90 is False


def test_misspelt_key_names_path_and_closest_names():
    with pytest.raises(RecipeError, match=r"train\.batch_sise: unknown key; did you mean batch_size"):
        load_recipe("cellpainting", ["train.batch_sise=64"])
    with pytest.raises(RecipeError, match=r"model\.mask_ration: unknown key; did you mean mask_ratio"):
        load_recipe("cellpainting", ["model.mask_ration=0.5"])


def test_bad_type_and_bad_values_are_named():
    with pytest.raises(RecipeError, match=r"train\.batch_size: .*integer.*'many'"):
        load_recipe("cellpainting", ["train.batch_size=many"])
    with pytest.raises(RecipeError, match=r"model\.mask_ratio: .*less than 1"):
        load_recipe("cellpainting", ["model.mask_ratio=1.5"])
    with pytest.raises(RecipeError, match="crop_size 100 is not a multiple of model.patch_size 16"):
        load_recipe("cellpainting", ["data.crop_size=100"])
    with pytest.raises(RecipeError, match="unknown model size 'vit_gigantic'"):
        load_recipe("cellpainting", ["model.size=vit_gigantic"])
    with pytest.raises(RecipeError, match="unknown strategy 'checkerboard'"):
        load_recipe("cellpainting", ["model.mask_strategy=checkerboard"])


def test_unknown_recipe_and_bad_override_syntax(tmp_path):
    with pytest.raises(RecipeError, match="unknown recipe 'cellpaint'; built-in recipes: cellpainting"):
        load_recipe("cellpaint")
    with pytest.raises(RecipeError, match="dotted.key=value"):
        load_recipe("cellpainting", ["train.batch_size"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(RecipeError, match="bad.yaml is not valid YAML"):
        load_recipe(bad)


def test_user_recipe_file_with_includes(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mine", "include": ["models/vit_base.yaml", "sensors/sentinel2_l2a.yaml"],
        "data": {"kind": "sentinel", "format": "scene", "path": "/data/s2"},
    }))  # fmt: skip
    r = load_recipe(path)
    assert r.model.size == "vit_base"
    assert [b["name"] for b in r.data.sensors["s2"]][:3] == ["B01", "B02", "B03"]
    assert r.data.sensors["s2"][3]["wavelength"] == pytest.approx(664.6)
    with pytest.raises(RecipeError, match="has no demo section"):
        resolve_recipe({"name": "x", "data": {"kind": "sentinel", "format": "scene"}}, demo=True)


@pytest.mark.parametrize("override, message", [
    ("train.base_lr=.inf", r"train\.base_lr: Input should be a finite number"),
    ("train.warmup_epochs=.nan", r"train\.warmup_epochs: Input should be a finite number"),
    ("model.fourier_weight=.inf", r"model\.fourier_weight: Input should be a finite number"),
    ("train.betas=[1.5, 0.95]", r"train\.betas\.0: Input should be less than 1"),
    ("train.min_lr=0.1", r"train\.min_lr 0\.1 is above the peak lr"),
    ("data.augment.resized_crop_scale=[0.9, 0.2]", r"data\.augment\.resized_crop_scale: .*0 < low <= high <= 1"),
    ("data.augment.resized_crop_scale=[0, 0]", r"data\.augment\.resized_crop_scale: .*0 < low <= high <= 1"),
    ("data.band_stats={s2: {B02: {mean: 0.1, sdt: 0.05}}}", r"data\.band_stats: .*s2\.B02 needs a finite mean and a std"),
    ("data.band_stats={s2: {B02: {mean: 0.1, std: -1}}}", r"data\.band_stats: .*s2\.B02 needs"),
    ("data.sensors.s2=[{nmae: B02}]", r"data\.sensors: .*sensor 's2': channel spec \{'nmae': 'B02'\} needs 'name'"),
    ("data.sensors.s2=[{name: B02, wavelength: -490}]", r"data\.sensors: .*'B02': wavelength -490 is not a positive"),
    ("data.sensors=null", r"data\.kind sentinel needs data\.sensors"),
    ("data.radiometry.optcal.scale=0.0001", r"data\.radiometry names sensors \['optcal'\] that data\.sensors does not"),
])  # fmt: skip
def test_values_that_would_fail_later_or_silently_are_refused_by_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe("sentinel", [override])


def test_a_radiometry_entry_left_by_a_dropped_builtin_sensor_is_allowed():
    recipe = load_recipe("sentinel", ["data.sensors={s2: [B02, B03]}"])
    assert list(recipe.data.sensors) == ["s2"] and "s1" in recipe.data.radiometry


def test_unknown_keys_inside_dicts_and_lists_get_their_section_s_names():
    with pytest.raises(RecipeError, match=r"data\.radiometry\.s2\.scael: unknown key; did you mean scale"):
        load_recipe("sentinel", ["data.radiometry.s2.scael=0.0001"])
    with pytest.raises(RecipeError, match=r"model\.mask_mix\.0\.wieght: unknown key; did you mean weight"):
        load_recipe("sentinel", ["model.mask_mix=[{strategy: random, wieght: 1}]"])


def test_a_section_check_does_not_echo_the_whole_section():
    with pytest.raises(RecipeError) as caught:
        load_recipe("cellpainting", ["data.crop_size=100"])
    assert "crop_size 100 is not a multiple" in str(caught.value) and "'model'" not in str(caught.value)
