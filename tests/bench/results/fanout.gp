set terminal pngcairo size 1100,480 font ",10"
set output "/tmp/sweep2/fanout.png"
set multiplot layout 1,2 title "sipcred fan-out: one PUBLISH to N subscribers (2 cores)"
set logscale x
set xrange [50:20000]
set grid
set key top left
set xlabel "N subscribers"
set ylabel "NOTIFY/s"
set title "NOTIFY/s"
plot "/tmp/sweep2/fanout-plot.dat" index 0 using 1:2 with linespoints title "per-conn, identity off", "/tmp/sweep2/fanout-plot.dat" index 1 using 1:2 with linespoints title "per-conn, identity on (openssl)", "/tmp/sweep2/fanout-plot.dat" index 2 using 1:2 with linespoints title "shared, identity off", "/tmp/sweep2/fanout-plot.dat" index 3 using 1:2 with linespoints title "shared, identity on (openssl)"
set logscale y
set ylabel "ms"
set title "time to the last NOTIFY"
plot "/tmp/sweep2/fanout-plot.dat" index 0 using 1:3 with linespoints title "per-conn, identity off", "/tmp/sweep2/fanout-plot.dat" index 1 using 1:3 with linespoints title "per-conn, identity on (openssl)", "/tmp/sweep2/fanout-plot.dat" index 2 using 1:3 with linespoints title "shared, identity off", "/tmp/sweep2/fanout-plot.dat" index 3 using 1:3 with linespoints title "shared, identity on (openssl)"
unset multiplot
