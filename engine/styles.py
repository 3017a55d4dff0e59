"""QGIS styles (QML) for the outputs, generated from the model's class list: the one source of colours.

Written as sidecars (``name.qml`` beside ``name.gpkg`` / ``name.tif``), which QGIS applies automatically when
the file is opened, in the plugin and by hand alike. Plain XML text: no qgis import. The ``<prop>`` form
of symbol-layer properties is used because QGIS 3.22 (our minimum) reads it and later versions still do.
"""

from __future__ import annotations

from .model_package import ClassInfo

# What xml.sax.saxutils.quoteattr escapes, without its import: it brings urllib's HTTP client (11 ms of every
# job's start-up, for a few class names).
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
)


def quoteattr(text: str) -> str:
    """``text`` as a double-quoted XML attribute value."""
    return f'"{text.translate(_ATTR_ESCAPES)}"'


_HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def polygon_qml(classes: tuple[ClassInfo, ...], field: str = "class_id") -> str:
    cats = "\n".join(
        f'      <category symbol="{c.id}" value="{c.id}" label={quoteattr(c.name)} render="true"/>' for c in classes
    )
    symbols = "\n".join(_fill_symbol(str(c.id), c.rgb, (35, 35, 35), 0.1) for c in classes)
    return f"""{_HEADER}<qgis version="3.22.0" styleCategories="Symbology|Labeling">
  <renderer-v2 type="categorizedSymbol" attr="{field}" forceraster="0" symbollevels="0" enableorderby="0">
    <categories>
{cats}
    </categories>
    <symbols>
{symbols}
    </symbols>
  </renderer-v2>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def _paletted_qml(entries: str) -> str:
    """A paletted raster style around its <paletteEntry> lines (class maps, change maps)."""
    return f"""{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
  </pipe>
</qgis>
"""


def class_raster_qml(classes: tuple[ClassInfo, ...]) -> str:
    entries = "\n".join(
        f'        <paletteEntry value="{c.id}" color="{c.color}" label={quoteattr(c.name)} alpha="255"/>'
        for c in classes
    )
    return _paletted_qml(entries)


def confidence_qml() -> str:
    return f"""{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="singlebandgray" grayBand="1" gradient="BlackToWhite" opacity="1" alphaBand="-1">
      <contrastEnhancement>
        <minValue>0</minValue>
        <maxValue>1</maxValue>
        <algorithm>StretchToMinimumMaximum</algorithm>
      </contrastEnhancement>
    </rasterrenderer>
  </pipe>
</qgis>
"""


def _fill_symbol(name: str, fill: tuple[int, int, int], outline: tuple[int, int, int], width: float) -> str:
    return f"""      <symbol type="fill" name="{name}" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <prop k="color" v="{",".join(map(str, fill))},255"/>
          <prop k="outline_color" v="{",".join(map(str, outline))},255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="{width}"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="style" v="solid"/>
        </layer>
      </symbol>"""


def change_polygon_qml(transitions: list[tuple[int, ClassInfo, ClassInfo]]) -> str:
    """Categorized on 'transition': fill in the new class's colour, outline in the old class's."""
    cats, symbols = [], []
    for k, (_code, a, b) in enumerate(transitions):
        label = "change" if a is b else f"{a.name} → {b.name}"
        cats.append(f'      <category symbol="{k}" value={quoteattr(label)} label={quoteattr(label)} render="true"/>')
        symbols.append(_fill_symbol(str(k), b.rgb, a.rgb, 0.6))
    return f"""{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">
  <renderer-v2 type="categorizedSymbol" attr="transition" forceraster="0" symbollevels="0" enableorderby="0">
    <categories>
{chr(10).join(cats)}
    </categories>
    <symbols>
{chr(10).join(symbols)}
    </symbols>
  </renderer-v2>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def change_raster_qml(transitions: list[tuple[int, ClassInfo, ClassInfo]]) -> str:
    entries = ['        <paletteEntry value="0" color="#ffffff" label="no change" alpha="0"/>']
    for code, a, b in transitions:
        label = "change" if a is b else f"{a.name} → {b.name}"
        entries.append(f'        <paletteEntry value="{code}" color="{b.color}" label={quoteattr(label)} alpha="255"/>')
    return _paletted_qml("\n".join(entries))


def crowns_qml() -> str:
    """Tree crowns: green outlines, light fill, so the imagery stays visible."""
    return f"""{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">
  <renderer-v2 type="singleSymbol" forceraster="0" symbollevels="0" enableorderby="0">
    <symbols>
{_fill_symbol("0", (120, 220, 120), (0, 160, 0), 0.5).replace('v="120,220,120,255"', 'v="120,220,120,60"')}
    </symbols>
  </renderer-v2>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


# A treetop's symbol size (mm) from its crown's diameter: 2-5 mm, a 4 m crown where it has none.
_TOP_SIZE = "min(5, max(2, coalesce(&quot;crown_diameter_m&quot;, 4) / 3))"


def treetops_qml() -> str:
    """Treetops: small dark-green circles with a white rim, sized by crown diameter (2-5 mm), so a count can be
    checked over the crowns and the imagery."""
    return f"""{_HEADER}<qgis version="3.22.0" styleCategories="Symbology">
  <renderer-v2 type="singleSymbol" forceraster="0" symbollevels="0" enableorderby="0">
    <symbols>
      <symbol type="marker" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleMarker" enabled="1" locked="0" pass="0">
          <prop k="color" v="0,100,0,255"/>
          <prop k="name" v="circle"/>
          <prop k="outline_color" v="255,255,255,255"/>
          <prop k="outline_style" v="solid"/>
          <prop k="outline_width" v="0.3"/>
          <prop k="outline_width_unit" v="MM"/>
          <prop k="size" v="2.5"/>
          <prop k="size_unit" v="MM"/>
          <data_defined_properties>
            <Option type="Map">
              <Option name="name" type="QString" value=""/>
              <Option name="properties" type="Map">
                <Option name="size" type="Map">
                  <Option name="active" type="bool" value="true"/>
                  <Option name="expression" type="QString" value="{_TOP_SIZE}"/>
                  <Option name="type" type="int" value="3"/>
                </Option>
              </Option>
              <Option name="type" type="QString" value="collection"/>
            </Option>
          </data_defined_properties>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
  <layerGeometryType>0</layerGeometryType>
</qgis>
"""
