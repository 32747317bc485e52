"""Regenerate the binary documents of the qaforge sample corpus.

The PDF and DOCX files in ``data/sample/docs/`` are committed to the repository so
that tests and demos can ingest them without running anything first. Binary files
cannot be reviewed in a diff, so their text lives here instead, and this script
rebuilds both files from it. Output is deterministic: the PDF is written in
reportlab's invariant mode and the DOCX gets fixed core properties and fixed zip
timestamps, so a rerun produces byte-identical files.

It also writes a generated site of any size for the scaling benchmark
(bench/scale.py): a city's park guide, one page per park, each with its own facts
(figures, years, names drawn from a seeded generator), linked from index pages of 50.

Usage::

    python scripts/make_sample_docs.py
    python scripts/make_sample_docs.py --site 1000 --out /tmp/parks
"""

from __future__ import annotations

import argparse
import html
import io
import random
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

from docx import Document
from reportlab.lib import colors
from reportlab.lib.pagesizes import LETTER
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import inch
from reportlab.platypus import (
    Flowable,
    ListFlowable,
    ListItem,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

DOCS_DIR = Path(__file__).resolve().parent.parent / "data" / "sample" / "docs"
AUTHOR = "qaforge sample corpus"
FIXED_DATE = datetime(2026, 1, 1)
ZIP_DATE_TIME = (2026, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 1


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Numbered:
    items: tuple[str, ...]


@dataclass(frozen=True)
class TableBlock:
    caption: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


Block = Heading | Para | Bullets | Numbered | TableBlock


@dataclass(frozen=True)
class SampleDoc:
    title: str
    subject: str
    blocks: tuple[Block, ...]


INSTALLATION_GUIDE = SampleDoc(
    title="Level 2 Home Charger Installation Guide",
    subject="Site survey, circuit sizing, mounting, commissioning and safety for a home Level 2 EV charger",
    blocks=(
        Para(
            "This guide describes how a Level 2 electric vehicle charger is installed in a typical "
            "North American home, from the first site survey to commissioning. It is general "
            "information: the work is done by a licensed electrician under a permit, following the "
            "manufacturer's instructions and the local edition of the National Electrical Code (NEC)."
        ),
        Heading("Site Survey"),
        Para(
            "A site survey is an inspection of the home before installation that establishes where "
            "the charger will go and whether the electrical service has enough capacity. It covers "
            "the following items."
        ),
        Bullets(
            (
                "Panel rating and free spaces: a 240 V charger circuit needs a double-pole breaker, "
                "which occupies two adjacent spaces in the panel.",
                "Existing load: a load calculation shows the service's spare capacity.",
                "Circuit length: the distance from the panel to the charger sets the wire size and "
                "the cost.",
                "Parking position: the cable, typically 18 ft to 25 ft (5.5 m to 7.6 m) long, must "
                "reach the vehicle's charge inlet without strain.",
                "Environment: an outdoor unit needs an enclosure rated for wet locations, such as "
                "NEMA Type 3R or Type 4, or commonly an IP rating of IP54 or higher.",
                "Network coverage: a smart charger needs Wi-Fi or cellular signal at the mounting "
                "location.",
            )
        ),
        Heading("Circuit Sizing"),
        Para(
            "A Level 2 charger is a continuous load, so the breaker must be rated at 125% of the "
            "charger's maximum current, and the conductors must be sized for the breaker. The "
            "charger must have a dedicated circuit that serves no other outlets or appliances. "
            "Table 1 lists common sizes for copper conductors."
        ),
        TableBlock(
            caption="Table 1. Circuit sizing for Level 2 chargers with copper conductors",
            header=("Charger current", "Breaker rating", "Copper wire size", "Power at 240 V"),
            rows=(
                ("16 A", "20 A", "12 AWG", "3.8 kW"),
                ("24 A", "30 A", "10 AWG", "5.8 kW"),
                ("32 A", "40 A", "8 AWG", "7.7 kW"),
                ("40 A", "50 A", "8 AWG", "9.6 kW"),
                ("48 A", "60 A", "6 AWG", "11.5 kW"),
            ),
        ),
        Para(
            "The wire sizes in Table 1 assume individual copper THHN or THWN-2 conductors in conduit "
            "with terminals rated for 75 °C. NM-B sheathed cable is limited to its 60 °C ampacity, "
            "so with NM-B cable the 40 A and 48 A rows commonly need 6 AWG and 4 AWG conductors "
            "respectively. On runs longer than about 100 ft (30 m), conductors may be upsized to keep "
            "the voltage drop below about 3%. For circuits of 30 A to 60 A, the minimum copper "
            "equipment grounding conductor is 10 AWG."
        ),
        Heading("Mounting Location and Height"),
        Para(
            "The charger is mounted on a wall or a pedestal within reach of the parking space. Most "
            "manufacturers specify a mounting height that places the connector holster roughly "
            "36 in to 48 in (0.9 m to 1.2 m) above the floor, and accessibility guidelines place "
            "operable parts between 15 in and 48 in above the floor. The NEC also sets a minimum "
            "storage height for the connector, historically 18 in (450 mm) indoors and 24 in "
            "(600 mm) outdoors."
        ),
        Para(
            "In a garage, the charger should be placed where a vehicle cannot strike it, or be "
            "protected by a wheel stop or a steel bollard."
        ),
        Heading("Cable Management"),
        Para(
            "Cable management is the storage and routing of the charging cable so that it stays off "
            "the floor, where it can be run over or become a trip hazard. When not in use, the "
            "connector is stored in its holster and the cable is coiled on a hook."
        ),
        Bullets(
            (
                "In the United States, the usable cable length of an EV charger is generally limited "
                "to 25 ft (7.5 m) unless a cable management system is used.",
                "Never use an extension cord or a plug adapter to extend the reach of a plug-in "
                "charger.",
                "Outdoors, route the cable so that it does not lie across a walkway or driveway.",
            )
        ),
        Heading("Commissioning Steps"),
        Para(
            "Commissioning is the set of checks and settings that make a newly installed charger "
            "ready for use. A typical sequence is:"
        ),
        Numbered(
            (
                "With the breaker locked off, tighten all terminations to the manufacturer's torque "
                "values.",
                "Set the charger's maximum current to match the circuit, for example 32 A on a "
                "40 A breaker or 48 A on a 60 A breaker. Depending on the model, this is done with "
                "a DIP switch, a rotary switch or an installer app.",
                "Switch the breaker on and measure the supply at the charger terminals; a nominal "
                "240 V supply normally reads between about 228 V and 252 V, which is within 5%.",
                "For a smart charger, connect it to the network and install any firmware update.",
                "Plug in a vehicle and confirm that it charges at the expected current, using the "
                "vehicle display or a clamp meter.",
                "After about 30 minutes at full current, check the breaker and the terminations for "
                "abnormal heat.",
                "Record the current setting, breaker size and wire size, label the breaker, and "
                "arrange the permit inspection.",
            )
        ),
        Heading("Safety Notes"),
        Bullets(
            (
                "A new 240 V circuit must be installed by a licensed electrician, with a permit and "
                "an inspection where the jurisdiction requires them.",
                "Lock out the breaker and verify with a tester that the circuit is dead before work.",
                "Never set the charger's current above 80% of the breaker rating.",
                "Use only chargers listed to UL 2594 by a nationally recognized testing laboratory.",
                "Stop using the charger if the cable is cut, the connector is cracked, or there is a "
                "burning smell or discoloration.",
            )
        ),
    ),
)

FLEET_DEPOT = SampleDoc(
    title="Fleet Depot Charging Planning",
    subject="Duty cycles, dwell time, load management, demand charges and V2G for fleet depots",
    blocks=(
        Para(
            "Fleet depot charging is the charging of an organization's vehicles at the site where "
            "they are parked between shifts. Unlike public charging, the operator knows in advance "
            "which vehicles will arrive, when they will leave and how much energy they need, so "
            "the charging system can be planned around the fleet's schedule."
        ),
        Heading("Duty Cycles and Energy Needs"),
        Para(
            "A duty cycle is the pattern of use of a vehicle over a working day: the distance "
            "driven, the route, the payload, the climate and the hours in service. The daily energy "
            "need of a vehicle equals its daily distance multiplied by its energy consumption per "
            "mile. Planners add a margin, commonly 20% to 30%, for winter weather, detours and "
            "battery aging. Table 1 gives typical figures; real consumption varies with the model, "
            "the load and the season."
        ),
        TableBlock(
            caption="Table 1. Typical daily energy needs by vehicle type",
            header=(
                "Vehicle type",
                "Consumption (kWh/mile)",
                "Example daily distance",
                "Daily energy",
            ),
            rows=(
                ("Light-duty car or pickup", "0.3-0.5", "80 miles", "24-40 kWh"),
                ("Delivery van", "0.4-0.7", "100 miles", "40-70 kWh"),
                ("Medium-duty box truck", "0.9-1.5", "120 miles", "about 110-180 kWh"),
                ("40 ft transit bus", "1.8-2.8", "150 miles", "270-420 kWh"),
                ("School bus", "1.2-1.8", "60 miles", "about 70-110 kWh"),
            ),
        ),
        Heading("Dwell Time and Charger Power"),
        Para(
            "Dwell time is the period a vehicle is parked at the depot and available for charging. "
            "The minimum charging power per vehicle equals the daily energy need divided by the "
            "product of the usable dwell time and the charging efficiency. For example, a van that "
            "needs 60 kWh and is parked for 10 hours, at 90% efficiency, needs "
            "60 ÷ (10 × 0.9) = about 6.7 kW, so a 7 kW to 11 kW Level 2 charger is enough. A transit "
            "bus that needs 350 kWh in a 6-hour overnight window needs 350 ÷ (6 × 0.9) = about 65 kW, "
            "which calls for a DC charger."
        ),
        Heading("Charger-to-Vehicle Ratio", level=2),
        Para(
            "The charger-to-vehicle ratio is the number of chargers, or dispensers, installed per "
            "vehicle. Overnight Level 2 depots usually provide one charger per vehicle, a 1:1 ratio, "
            "so that nobody moves vehicles at night. DC depots often use one power cabinet "
            "that feeds two to four dispensers, charging vehicles in sequence or sharing power, "
            "which gives ratios such as 1:2 or 1:3 when dwell times are long. Parking layout, cable "
            "reach and whether vehicles park nose-in or pull through must be planned together with "
            "the chargers."
        ),
        Heading("Load Management and Managed Charging"),
        Para(
            "Load management is the control of charging power so that the depot's total demand "
            "stays below a set limit. Static load management divides a fixed power limit among the "
            "chargers. Dynamic load management measures the site's total load in real time and "
            "gives the chargers whatever capacity the rest of the site is not using. Managed "
            "charging is software that plans each vehicle's session and sends power limits to the "
            "chargers, commonly as OCPP smart charging profiles. A managed charging system "
            "typically uses these inputs:"
        ),
        Bullets(
            (
                "each vehicle's arrival time, departure time and next-day route;",
                "each vehicle's state of charge on arrival, reported by telematics or the charger;",
                "the site power limit set by the utility connection and other building loads;",
                "tariff periods, including off-peak hours and demand charge windows;",
                "charger availability and faults.",
            )
        ),
        Heading("Demand Charges at the Depot", level=2),
        Para(
            "A demand charge is a fee based on the site's highest average power over a short "
            "interval, usually 15 minutes, in the billing month. Unmanaged charging creates high "
            "peaks because every vehicle starts charging as soon as it returns. For example, 40 vans "
            "on 11.5 kW chargers that all plug in at 6 p.m. create a peak of 460 kW. If each van "
            "needs 60 kWh and can charge over 12 hours, the fleet draws 2,400 ÷ 0.9 = about "
            "2,670 kWh from the grid, an average of only about 220 kW. At a demand charge of $15 per "
            "kW per month, cutting the peak from 460 kW to about 230 kW reduces the monthly demand "
            "charge from $6,900 to $3,450."
        ),
        Heading("Utility Coordination and Site Capacity"),
        Para(
            "Contact the electric utility early. A large depot may need a new "
            "transformer or a service upgrade, and lead times for utility work and equipment "
            "commonly range from several months to two years or more. Many utilities offer "
            "make-ready programs, which pay for some or all of the wiring and equipment up to the "
            "charger. Installing conduit for future chargers in the first phase costs much less "
            "than reopening the site later."
        ),
        Heading("Vehicle-to-Grid Basics"),
        Para(
            "Vehicle-to-grid (V2G) is the export of energy from a parked vehicle's battery to the "
            "electricity grid through a bidirectional charger. Vehicle-to-building (V2B) supplies a "
            "building's own load instead. Most bidirectional systems today use DC chargers, which "
            "convert the battery's DC to AC; CHAdeMO supports bidirectional charging, and "
            "ISO 15118-20 adds it for CCS. In the United States, grid-connected bidirectional "
            "equipment must meet interconnection requirements such as IEEE 1547 and UL 1741, and "
            "UL 9741 covers bidirectional EV charging equipment. V2G suits fleets whose vehicles "
            "are parked at predictable times:"
        ),
        Bullets(
            (
                "school buses, which are idle in the middle of the day and for much of the summer;",
                "vehicles parked for long periods at depots with high demand charges, where "
                "exported energy can reduce the site's peak;",
                "fleets where utilities pay for demand response or grid services.",
            )
        ),
        Para(
            "Operators should confirm that the vehicle's battery warranty allows bidirectional use."
        ),
    ),
)


def _pdf_table(block: TableBlock, body_style: ParagraphStyle) -> Table:
    data = [[Paragraph(f"<b>{escape(cell)}</b>", body_style) for cell in block.header]]
    data += [[Paragraph(escape(cell), body_style) for cell in row] for row in block.rows]
    table = Table(data, hAlign="LEFT", repeatRows=1)
    table.setStyle(
        TableStyle(
            [
                ("GRID", (0, 0), (-1, -1), 0.5, colors.grey),
                ("BACKGROUND", (0, 0), (-1, 0), colors.lightgrey),
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ]
        )
    )
    return table


def write_pdf(doc: SampleDoc, path: Path) -> None:
    """Write ``doc`` as a PDF with Title/Heading1/Heading2/BodyText styles."""
    styles = getSampleStyleSheet()
    body = styles["BodyText"]
    story: list[Flowable] = [Paragraph(escape(doc.title), styles["Title"])]
    for block in doc.blocks:
        match block:
            case Heading(text, level):
                story.append(Paragraph(escape(text), styles[f"Heading{level}"]))
            case Para(text):
                story.append(Paragraph(escape(text), body))
            case Bullets(items) | Numbered(items):
                bullet_type = "bullet" if isinstance(block, Bullets) else "1"
                story.append(
                    ListFlowable(
                        [ListItem(Paragraph(escape(item), body)) for item in items],
                        bulletType=bullet_type,
                        leftIndent=18,
                    )
                )
            case TableBlock():
                story.append(Paragraph(f"<i>{escape(block.caption)}</i>", body))
                story.append(_pdf_table(block, body))
                story.append(Spacer(1, 6))
    SimpleDocTemplate(
        str(path),
        pagesize=LETTER,
        leftMargin=inch,
        rightMargin=inch,
        topMargin=inch,
        bottomMargin=inch,
        title=doc.title,
        author=AUTHOR,
        subject=doc.subject,
        creator=AUTHOR,
        invariant=1,
    ).build(story)


def _normalize_zip(data: bytes) -> bytes:
    """Rewrite a zip archive with fixed member timestamps so output is reproducible."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for member in src.infolist():
            info = zipfile.ZipInfo(member.filename, date_time=ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            dst.writestr(info, src.read(member))
    return out.getvalue()


def write_docx(doc: SampleDoc, path: Path) -> None:
    """Write ``doc`` as a DOCX with Title, Heading 1/2, list and table styles."""
    document = Document()
    props = document.core_properties
    props.title = doc.title
    props.subject = doc.subject
    props.author = AUTHOR
    props.last_modified_by = AUTHOR
    props.created = FIXED_DATE
    props.modified = FIXED_DATE
    props.revision = 1
    props.comments = "Sample document for the qaforge test corpus."

    document.add_heading(doc.title, level=0)
    for block in doc.blocks:
        match block:
            case Heading(text, level):
                document.add_heading(text, level=level)
            case Para(text):
                document.add_paragraph(text)
            case Bullets(items):
                for item in items:
                    document.add_paragraph(item, style="List Bullet")
            case Numbered(items):
                for item in items:
                    document.add_paragraph(item, style="List Number")
            case TableBlock():
                document.add_paragraph(block.caption, style="Caption")
                table = document.add_table(rows=1, cols=len(block.header), style="Table Grid")
                for cell, text in zip(table.rows[0].cells, block.header):
                    cell.paragraphs[0].add_run(text).bold = True
                for row in block.rows:
                    for cell, text in zip(table.add_row().cells, row):
                        cell.text = text

    buffer = io.BytesIO()
    document.save(buffer)
    path.write_bytes(_normalize_zip(buffer.getvalue()))


_PARK_WORDS = (
    "Willow Brook Cedar Hollow Maple Ridge Heron Lake Fox Meadow Stone Bridge Lark Hill Ash Grove Otter Creek "
    "Birch Glen Falcon Point Juniper Vale Elm Crossing Rowan Field Aspen Bay Clover Down Pine Bluff Wren Marsh"
).split()
_FACILITIES = ("a playground", "tennis courts", "a dog run", "a boating pond", "a skate park", "picnic shelters",
               "a splash pad", "a community garden", "an outdoor gym", "a bandstand", "a nature trail",
               "basketball courts", "a cafe", "public toilets", "a bicycle repair stand")
_TREES = ("oaks", "lindens", "plane trees", "beeches", "chestnuts", "silver birches", "cherry trees", "yews")


def park_page(number: int, rng: random.Random) -> tuple[str, str]:
    """(name, HTML) of one park's page: facts a question can be asked about."""
    name = f"{rng.choice(_PARK_WORDS)} {rng.choice(_PARK_WORDS)} Park No. {number}"
    opened, area = rng.randint(1850, 2020), round(rng.uniform(0.4, 85.0), 1)
    opens, closes = rng.randint(5, 8), rng.randint(19, 23)
    trees, species = rng.randint(40, 4000), rng.choice(_TREES)
    facilities = rng.sample(_FACILITIES, 4)
    spaces, fee = rng.randint(0, 300), rng.choice((0, 1, 2, 3))
    bus, minutes = rng.randint(1, 99), rng.randint(2, 25)
    friends = f"{rng.choice(_PARK_WORDS)} Friends Association"
    event, month = rng.choice(("summer concert", "tree planting day", "night walk", "plant sale")), rng.choice(
        ("April", "May", "June", "July", "August", "September"))
    body = f"""<h1>{name}</h1>
<p>{name} opened in {opened} and covers {area} hectares. It is one of the city's public parks and
is looked after by the parks department together with the {friends}.</p>
<h2>Opening hours</h2>
<p>The park is open every day from {opens}:00 to {closes}:00. The gates close
{rng.randint(10, 30)} minutes earlier from November to February.</p>
<h2>Trees and wildlife</h2>
<p>About {trees} trees grow in the park, most of them {species}. The oldest tree was planted
in {opened + rng.randint(0, 30)}. Volunteers count the birds in the park every spring.</p>
<h2>Facilities</h2>
<p>The park has {facilities[0]}, {facilities[1]}, {facilities[2]} and {facilities[3]}.
Dogs must be kept on a lead near {facilities[0]}.</p>
<h2>Getting there</h2>
<p>Bus line {bus} stops at the main gate, and the nearest railway station is {minutes} minutes
away on foot. {"There is no car park." if spaces == 0 else f"The car park has {spaces} spaces"
+ (" and is free." if fee == 0 else f" and costs {fee} euros per hour.")}</p>
<h2>Events</h2>
<p>The {friends} holds a {event} in the park every {month}. Everyone is welcome, and entry is free.</p>"""
    return name, body


def write_site(out: Path, pages: int, seed: int = 0) -> None:
    """`pages` park pages under `out`, linked from `index.html` through index pages of 50."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    links: list[str] = []
    for number in range(1, pages + 1):
        name, body = park_page(number, rng)
        page = f"park-{number:04d}.html"
        (out / page).write_text(f"<!doctype html><html><head><title>{html.escape(name)}</title></head>"
                                f"<body><main>{body}</main></body></html>\n")
        links.append(f'<li><a href="{page}">{html.escape(name)}</a></li>')
    # Index pages with a paragraph of their own: crawl4ai takes a page of links alone for
    # an anti-bot placeholder and drops it.
    about = (f"<p>The city's parks department looks after {pages} public parks. Each park has a page with its "
             "opening hours, its trees, its facilities, how to get there and the events held in it. The parks "
             "are listed in the order they were added to this guide, fifty to a page.</p>")
    lists = [links[i: i + 50] for i in range(0, len(links), 50)]
    for i, chunk in enumerate(lists, start=1):
        (out / f"parks-{i:02d}.html").write_text(
            f"<!doctype html><html><head><title>Parks, page {i}</title></head><body><main><h1>Parks, page {i}"
            f"</h1>{about}<ul>{''.join(chunk)}</ul></main></body></html>\n")
    index = "".join(f'<li><a href="parks-{i:02d}.html">Parks, page {i}</a></li>' for i in range(1, len(lists) + 1))
    (out / "index.html").write_text("<!doctype html><html><head><title>City parks</title></head><body><main>"
                                    f"<h1>City parks</h1>{about}<ul>{index}</ul></main></body></html>\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=int, help="Write a generated park guide of this many pages instead.")
    parser.add_argument("--out", type=Path, help="Where the generated site goes.")
    args = parser.parse_args()
    if args.site:
        if args.out is None:
            parser.error("--site needs --out")
        write_site(args.out, args.site)
        return
    DOCS_DIR.mkdir(parents=True, exist_ok=True)
    write_pdf(INSTALLATION_GUIDE, DOCS_DIR / "charger-installation-guide.pdf")
    write_docx(FLEET_DEPOT, DOCS_DIR / "fleet-depot-charging.docx")


if __name__ == "__main__":
    main()
