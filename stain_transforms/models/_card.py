"""Model card templates (Jinja, as huggingface_hub's ModelCard uses) for the shipped models.

``save_pretrained(dir, model_card_kwargs={...})`` fills the fields below; unknown fields say so
instead of guessing. ``license`` (with ``license_name`` / ``license_link``) goes to the front matter
and the Licence section (see :meth:`~stain_transforms.models.hub_mixin.HubModelMixin.generate_model_card`).
"""

_COMMON = """
## Domains

- Source domain: {{ source_domain | default("not stated", true) }}
- Target domain: {{ target_domain | default("not stated", true) }}

## Training data

{{ training_data | default("not stated", true) }}

{% if data_terms %}Terms of the training data: {{ data_terms }}
{% endif %}
{% if metrics %}## Evaluation

{{ metrics }}
{% endif %}
## Licence

{{ license_text | default("Not stated.", true) }}

## Use

```python
from stain_transforms import {{ transform_name }}

normalize = {{ transform_name }}.from_pretrained("{{ load_name | default("path/to/this/folder", true) }}")
out = normalize(image)  # numpy HWC, CHW/BCHW tensor or PIL in, the same type out
```

- Library: [stain_transforms]({{ repo_url | default("https://github.com/stain-transforms/stain_transforms", true) }})
- Paper: {{ paper_url | default("not stated", true) }}
"""

STAINNET_CARD = """---
{{ card_data }}
---

# StainNet{% if title %}: {{ title }}{% endif %}

A StainNet colour-normalisation network (Kang et al., 2021): 1x1 convolutions that map each RGB
value of the source domain to the target domain. For uint8 images it is an exact 256^3 lookup table.
""" + _COMMON.replace("{{ transform_name }}", "StainNetNormalize")

STAINGAN_CARD = """---
{{ card_data }}
---

# StainGAN{% if title %}: {{ title }}{% endif %}

A StainGAN generator (Shaban et al., 2019): the CycleGAN ResNet generator that translates
images of the source stain domain into the target domain. Large images are processed in
overlapping, blended tiles.
""" + _COMMON.replace("{{ transform_name }}", "StainGANNormalize")

FITTED_CARD = """---
{{ card_data }}
---

# {{ transform_name }}{% if title %}: {{ title }}{% endif %}

A fitted {{ method_title }} stain normalizer of [stain_transforms]({{ repo_url | default("https://github.com/stain-transforms/stain_transforms", true) }}):
its settings (`config.json`) and the target statistics it was fitted on (`model.safetensors`:
{{ statistics }}). No images are stored.

- Target domain: {{ target_domain | default("not stated", true) }}
- Fitted on: {{ training_data | default("not stated", true) }}

## Licence

{{ license_text | default("Not stated.", true) }}

## Use

```python
from stain_transforms import {{ transform_name }}

normalize = {{ transform_name }}.from_pretrained("{{ load_name | default("path/to/this/folder", true) }}")
out = normalize(image)  # numpy HWC, CHW/BCHW tensor or PIL in, the same type out
```
"""
