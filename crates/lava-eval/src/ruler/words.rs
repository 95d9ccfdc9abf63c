//! Word lists for the synthetic tasks.
//!
//! RULER draws its words from the `wonderwords` package (`nounlist.txt`, `adjectivelist.txt`,
//! `verblist.txt`, several thousand words) and, for very long common-words lists, from a
//! large English dictionary (`english_words.json`). These lists are **our own**, smaller
//! selection of common English words, written for this crate: about 350 adjectives, 450
//! nouns and 400 verbs. Consequences (documented deviations):
//! * `words`-type needle keys are `adjective-noun` pairs as in RULER, but from ~160k pairs
//!   instead of millions (keys are additionally forced to be distinct within a sample);
//! * common-words extraction needs more distinct words than the base list for long contexts;
//!   it then extends the pool with two-word compounds (`"riverstone"`), see
//!   [`extended_word_pool`], where RULER would switch to its dictionary.

/// Common English adjectives (our selection).
pub const ADJECTIVES: &[&str] = &[
    "able", "absent", "active", "actual", "afraid", "agile", "alert", "alive", "amber", "ancient", "angry",
    "annual", "anxious", "apparent", "arctic", "ashamed", "average", "awake", "aware", "awful", "bad", "bald",
    "bare", "basic", "bitter", "black", "blank", "bland", "blind", "blond", "blue", "blunt", "bold", "boring",
    "bouncy", "brave", "brief", "bright", "brisk", "broad", "broken", "brown", "bumpy", "busy", "calm",
    "careful", "casual", "cheap", "cheerful", "chilly", "civil", "classic", "clean", "clear", "clever", "close",
    "cloudy", "clumsy", "coarse", "cold", "colorful", "common", "complex", "cool", "correct", "cosmic", "costly",
    "cozy", "crazy", "creamy", "crisp", "crooked", "crowded", "cruel", "curious", "curly", "cute", "daily",
    "damp", "dark", "dear", "decent", "deep", "delicate", "dense", "direct", "dirty", "distant", "dizzy",
    "double", "dramatic", "dry", "dull", "dusty", "eager", "early", "easy", "elastic", "elderly", "electric",
    "elegant", "empty", "endless", "enormous", "equal", "even", "exact", "excited", "exotic", "expert", "faint",
    "fair", "faithful", "false", "famous", "fancy", "fast", "fearless", "fierce", "final", "fine", "firm",
    "flat", "fluffy", "foggy", "fond", "formal", "fragile", "frank", "free", "frequent", "fresh", "friendly",
    "frosty", "frozen", "full", "funny", "fuzzy", "gentle", "giant", "gifted", "glad", "gloomy", "glossy",
    "golden", "good", "graceful", "grand", "grateful", "gray", "great", "green", "grumpy", "guilty", "hairy",
    "handsome", "happy", "hard", "harsh", "healthy", "heavy", "helpful", "hidden", "high", "hollow", "honest",
    "hot", "huge", "humble", "hungry", "icy", "ideal", "idle", "immense", "important", "innocent", "intense",
    "jagged", "jealous", "jolly", "juicy", "junior", "keen", "kind", "large", "late", "lazy", "lean", "legal",
    "level", "light", "likely", "little", "lively", "local", "lonely", "long", "loose", "loud", "lovely", "low",
    "loyal", "lucky", "magic", "main", "major", "massive", "mature", "mellow", "merry", "mighty", "mild",
    "minor", "misty", "modern", "modest", "moist", "narrow", "nasty", "native", "natural", "neat", "nervous",
    "new", "nice", "nimble", "noble", "noisy", "normal", "numb", "odd", "old", "open", "orange", "ordinary",
    "pale", "patient", "perfect", "plain", "pleasant", "polite", "poor", "popular", "precious", "pretty",
    "proud", "pure", "purple", "quick", "quiet", "rapid", "rare", "raw", "ready", "real", "red", "regular",
    "remote", "rich", "rigid", "ripe", "rough", "round", "royal", "rude", "rural", "rusty", "sad", "safe",
    "salty", "sandy", "scarce", "secret", "serious", "shallow", "sharp", "shiny", "short", "shy", "silent",
    "silky", "silly", "silver", "simple", "sleepy", "slim", "slow", "small", "smart", "smooth", "soft", "solid",
    "sour", "spare", "spicy", "splendid", "steady", "steep", "sticky", "stiff", "strange", "strict", "strong",
    "sturdy", "subtle", "sudden", "sunny", "super", "sweet", "swift", "tall", "tame", "tender", "tense",
    "thick", "thin", "thirsty", "tidy", "tiny", "tired", "tough", "tragic", "tricky", "true", "ugly", "unique",
    "upset", "urban", "useful", "vacant", "vague", "valid", "vast", "velvet", "violet", "vital", "vivid",
    "warm", "weak", "wealthy", "weary", "wet", "white", "whole", "wide", "wild", "wise", "witty", "wooden",
    "yellow", "young", "zealous",
];

/// Common English nouns (our selection).
pub const NOUNS: &[&str] = &[
    "account", "acorn", "actor", "airport", "alarm", "album", "anchor", "angle", "animal", "ankle", "answer",
    "apple", "apron", "arch", "arm", "army", "arrow", "artist", "attic", "aunt", "author", "avenue", "baby",
    "badge", "bag", "bakery", "ball", "balloon", "banana", "band", "bank", "barn", "basket", "bath", "battery",
    "beach", "bean", "bear", "beard", "bed", "bee", "bell", "belt", "bench", "berry", "bicycle", "bird",
    "blanket", "blossom", "board", "boat", "body", "bone", "book", "boot", "bottle", "bowl", "box", "brain",
    "branch", "bread", "brick", "bridge", "brother", "brush", "bubble", "bucket", "budget", "building", "bull",
    "butter", "button", "cabin", "cable", "cake", "camel", "camera", "camp", "candle", "candy", "canoe",
    "canvas", "captain", "car", "card", "carpet", "carrot", "cart", "castle", "cat", "cattle", "cave",
    "ceiling", "cellar", "chain", "chair", "chalk", "channel", "cheese", "cherry", "chest", "chicken", "child",
    "chimney", "church", "circle", "city", "clock", "cloud", "coach", "coast", "coat", "coffee", "coin",
    "collar", "comet", "copper", "corner", "cottage", "cotton", "country", "cousin", "cow", "crab", "crayon",
    "cream", "creek", "crow", "crown", "cup", "curtain", "cushion", "daisy", "dancer", "desert", "desk",
    "diamond", "dinner", "doctor", "dog", "doll", "dolphin", "door", "dragon", "drawer", "dream", "dress",
    "drum", "duck", "eagle", "ear", "earth", "egg", "elbow", "engine", "engineer", "envelope", "eye", "fabric",
    "face", "factory", "falcon", "farm", "farmer", "feather", "fence", "ferry", "field", "finger", "fire",
    "fish", "flag", "flame", "flower", "flute", "fog", "forest", "fork", "fountain", "fox", "frog", "fruit",
    "furnace", "garage", "garden", "garlic", "gate", "gem", "ghost", "giraffe", "glass", "glove", "goat",
    "gold", "grain", "grape", "grass", "guitar", "hair", "hall", "hammer", "hand", "harbor", "hat", "hawk",
    "heart", "hedge", "helmet", "hill", "hobby", "honey", "horse", "hospital", "hotel", "house", "island",
    "jacket", "jar", "jelly", "jewel", "journal", "judge", "jungle", "kettle", "key", "king", "kitchen",
    "kite", "kitten", "knee", "knife", "ladder", "lake", "lamp", "lantern", "lawyer", "leaf", "lemon",
    "letter", "library", "lion", "lizard", "lobster", "lock", "magnet", "mailbox", "map", "marble", "market",
    "mask", "meadow", "meal", "melon", "mirror", "monkey", "moon", "mountain", "mouse", "mouth", "muffin",
    "museum", "music", "nail", "napkin", "needle", "nest", "net", "night", "nose", "notebook", "nurse",
    "oak", "ocean", "office", "onion", "orchard", "otter", "oven", "owl", "paddle", "page", "painter",
    "palace", "pan", "panda", "paper", "parcel", "park", "parrot", "path", "peach", "pear", "pebble", "pen",
    "pencil", "pepper", "piano", "picture", "pie", "pig", "pillow", "pilot", "pine", "pipe", "planet",
    "plant", "plate", "pocket", "poem", "pond", "pony", "potato", "pottery", "puddle", "pumpkin", "puppy",
    "puzzle", "queen", "quilt", "rabbit", "radio", "rain", "rainbow", "raven", "recipe", "ribbon", "rice",
    "riddle", "ring", "river", "road", "robot", "rock", "rocket", "roof", "room", "rope", "rose", "sailor",
    "salad", "salmon", "sand", "sandal", "saucer", "scarf", "school", "scissors", "sea", "seed", "shadow",
    "shark", "sheep", "shelf", "shell", "ship", "shirt", "shoe", "shop", "shovel", "singer", "sister", "skate",
    "sky", "sled", "snail", "snake", "snow", "soap", "sock", "sofa", "soldier", "song", "soup", "spider",
    "spoon", "spring", "square", "squirrel", "stable", "stage", "stair", "star", "station", "statue", "stone",
    "storm", "story", "stove", "stream", "street", "student", "sugar", "suitcase", "summer", "sun", "swan",
    "sweater", "table", "tail", "teacher", "teapot", "temple", "tent", "theater", "thread", "throne",
    "thunder", "ticket", "tiger", "toast", "tomato", "tongue", "tooth", "torch", "tower", "town", "toy",
    "tractor", "train", "tree", "truck", "trumpet", "tulip", "tunnel", "turtle", "umbrella", "uncle",
    "valley", "vase", "village", "violin", "volcano", "wagon", "wallet", "walnut", "wand", "watch", "water",
    "wave", "whale", "wheel", "whistle", "window", "wind", "wing", "winter", "wizard", "wolf", "wool",
    "worm", "yacht", "yard", "zebra",
];

/// Common English verbs (our selection).
pub const VERBS: &[&str] = &[
    "accept", "add", "admire", "admit", "advise", "agree", "allow", "amuse", "announce", "annoy", "answer",
    "appear", "applaud", "arrange", "arrive", "ask", "attach", "attack", "attend", "avoid", "bake", "balance",
    "bang", "bathe", "beg", "behave", "belong", "bless", "blink", "boast", "boil", "bolt", "borrow", "bounce",
    "bow", "breathe", "bring", "build", "bump", "burn", "bury", "buzz", "calculate", "call", "carry", "carve",
    "catch", "cause", "challenge", "change", "charge", "chase", "cheat", "check", "cheer", "chew", "choke",
    "chop", "claim", "clap", "clean", "climb", "cling", "collect", "comb", "command", "compare", "complain",
    "complete", "concern", "confess", "connect", "consider", "contain", "continue", "copy", "cough", "count",
    "cover", "crack", "crash", "crawl", "cross", "crush", "cry", "cure", "curl", "cycle", "dance", "dare",
    "decide", "deliver", "depend", "describe", "deserve", "destroy", "develop", "dig", "discover", "divide",
    "drag", "drain", "draw", "dress", "drink", "drip", "drive", "drop", "dust", "earn", "educate", "embrace",
    "employ", "empty", "enjoy", "enter", "escape", "examine", "excite", "excuse", "exist", "expand", "explain",
    "explode", "fade", "fasten", "fetch", "file", "fill", "film", "find", "fit", "fix", "flap", "flash",
    "float", "flood", "flow", "fly", "fold", "follow", "forgive", "gather", "gaze", "giggle", "glow", "glue",
    "grab", "greet", "grin", "grip", "groan", "grow", "guard", "guess", "guide", "hammer", "handle", "hang",
    "happen", "harm", "hate", "haunt", "heal", "heat", "help", "hide", "hop", "hope", "hover", "hug", "hum",
    "hunt", "hurry", "identify", "ignore", "imagine", "impress", "improve", "include", "inform", "inject",
    "invent", "invite", "itch", "jog", "join", "joke", "judge", "juggle", "jump", "kick", "kiss", "kneel",
    "knit", "knock", "knot", "label", "land", "last", "laugh", "launch", "learn", "lift", "like", "list",
    "listen", "live", "load", "lock", "long", "look", "love", "manage", "march", "mark", "marry", "match",
    "measure", "melt", "mend", "mix", "moan", "move", "nod", "notice", "obey", "observe", "offer", "open",
    "order", "own", "pack", "paddle", "paint", "park", "pause", "peel", "perform", "pinch", "plan", "plant",
    "play", "plead", "point", "polish", "pour", "praise", "pray", "preach", "prefer", "prepare", "present",
    "press", "pretend", "print", "promise", "protect", "pull", "pump", "punch", "push", "puzzle", "question",
    "race", "rain", "raise", "reach", "read", "realize", "receive", "recognize", "record", "reduce", "reflect",
    "refuse", "relax", "remain", "remember", "remind", "remove", "repair", "repeat", "reply", "report",
    "rescue", "retire", "return", "rhyme", "rinse", "roll", "rub", "rush", "sail", "save", "scatter", "scold",
    "scrape", "scream", "search", "settle", "shave", "shiver", "shop", "shout", "sigh", "sing", "sketch",
    "ski", "skip", "sleep", "slide", "slip", "smell", "smile", "sneeze", "sniff", "snore", "soak", "solve",
    "sort", "sparkle", "spill", "spray", "sprout", "squash", "squeeze", "stamp", "stare", "start", "steer",
    "step", "stir", "stitch", "stop", "stretch", "stroke", "study", "succeed", "suggest", "supply", "support",
    "surprise", "surround", "swim", "swing", "talk", "tame", "taste", "teach", "tease", "tempt", "thank",
    "thaw", "tickle", "tie", "tip", "touch", "tour", "trace", "trade", "train", "travel", "treat", "tremble",
    "trick", "trust", "try", "tumble", "turn", "twist", "type", "unite", "unlock", "unpack", "urge", "use",
    "vanish", "visit", "wait", "walk", "wander", "want", "warn", "wash", "watch", "wave", "weigh", "welcome",
    "whisper", "whistle", "wink", "wish", "wobble", "wonder", "work", "worry", "wrap", "wreck", "wrestle",
    "yawn", "yell", "zip", "zoom",
];

/// `sorted(set(adj + "-" + noun))`: the pool of `words`-type needle keys / values.
pub fn adjective_noun_pairs() -> Vec<String> {
    let mut v: Vec<String> = ADJECTIVES.iter().flat_map(|a| NOUNS.iter().map(move |n| format!("{a}-{n}"))).collect();
    v.sort();
    v.dedup();
    v
}

/// `sorted(set(nouns + adjs + verbs))`: the pool of common-words extraction.
pub fn base_word_pool() -> Vec<String> {
    let mut v: Vec<String> = NOUNS.iter().chain(ADJECTIVES).chain(VERBS).map(|s| s.to_string()).collect();
    v.sort();
    v.dedup();
    v
}

/// At least `n` distinct words: [`base_word_pool`] followed, if that is too short, by
/// two-word compounds `a + b` of distinct base words in a fixed order (our stand-in for
/// RULER's dictionary fallback). Compounds that coincide with a base word are skipped.
pub fn extended_word_pool(n: usize) -> Vec<String> {
    let base = base_word_pool();
    if n <= base.len() {
        return base;
    }
    let mut seen: std::collections::HashSet<String> = base.iter().cloned().collect();
    let mut out = base.clone();
    'outer: for a in &base {
        for b in &base {
            if out.len() >= n {
                break 'outer;
            }
            if a == b {
                continue;
            }
            let w = format!("{a}{b}");
            if seen.insert(w.clone()) {
                out.push(w);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_clean() {
        for list in [ADJECTIVES, NOUNS, VERBS] {
            for w in list {
                assert!(!w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()), "{w}");
            }
            let mut v = list.to_vec();
            v.sort();
            v.dedup();
            assert_eq!(v.len(), list.len(), "duplicates in a list");
        }
        assert!(ADJECTIVES.len() >= 250 && NOUNS.len() >= 400 && VERBS.len() >= 250);
        let pairs = adjective_noun_pairs();
        assert_eq!(pairs.len(), ADJECTIVES.len() * NOUNS.len());
        let pool = extended_word_pool(20_000);
        assert!(pool.len() >= 20_000);
        let set: std::collections::HashSet<_> = pool.iter().collect();
        assert_eq!(set.len(), pool.len());
    }
}
